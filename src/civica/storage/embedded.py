"""``DuckDBStore``: the embedded default backend, one DuckDB file, batched Arrow writes.

SQL here stays portable (plain tables, no DuckDB-only types in the schema) so the PostgreSQL
backend can share its shape.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from civica.core.entity import Entity, Observation, attribute_names
from civica.core.geo import bbox_of, haversine_m
from civica.core.readings import readings_table, timestamp_array
from civica.core.store import (
    ApiKeyRecord,
    DeadLetter,
    EntityPage,
    EntityQuery,
    HistoryDocuments,
    ObservationQuery,
    PreparedWrite,
    StoredEntity,
    TypeInfo,
)

SCHEMA_VERSION = 2  # 2: entities.entity_key
# Recent observations are moved into the sorted history once this many have arrived.
COMPACT_ROWS = 1_000_000
# Current states kept in memory as their JSON documents (about 0.5 KB each), so the ingest
# path reads the states it merges without a query. 0 turns the cache off.
STATE_CACHE = 200_000
# The whole temporal history: sorted runs plus the recent, arrival-ordered tail.
_HISTORY = "(select * from observations union all select * from observations_recent)"
_TS = pa.timestamp("us", tz="UTC")
_MAX_BIGINT = 2**63 - 1

_SCHEMA = """
create table if not exists entities (
    tenant varchar not null,
    id varchar not null,
    type varchar not null,
    doc varchar not null,
    attrs varchar[] not null,
    min_lon double, min_lat double, max_lon double, max_lat double,
    created_at timestamptz not null,
    modified_at timestamptz not null,
    entity_key bigint,
    primary key (tenant, id)
);
create table if not exists observations (
    tenant varchar not null,
    entity_key bigint not null,
    entity_id varchar not null,
    entity_type varchar not null,
    attribute varchar not null,
    observed_at timestamptz not null,
    value_num double,
    value_json varchar,
    unit varchar
);
create table if not exists observations_recent as select * from observations limit 0;
create table if not exists dead_letters (
    received_at timestamptz not null,
    source varchar not null,
    tenant varchar not null,
    topic varchar,
    reason varchar not null,
    payload varchar not null
);
create table if not exists api_keys (
    key_id varchar primary key,
    key_hash varchar not null,
    role varchar not null,
    label varchar not null,
    created_at timestamptz not null,
    revoked boolean not null
);
create table if not exists subscriptions (
    tenant varchar not null,
    id varchar not null,
    doc varchar not null,
    primary key (tenant, id)
);
create table if not exists schema_info (version integer not null);
"""


class DatabaseInUseError(OSError):
    """The DuckDB file is held by another process."""


def entity_key(tenant: str, entity_id: str) -> int:
    """A stable 64-bit key for (tenant, id): scanning integers beats scanning strings."""
    digest = hashlib.blake2b(f"{tenant}\x00{entity_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class DuckDBStore:
    """One DuckDB file holds entities, observations, dead letters, keys and subscriptions."""

    def __init__(
        self,
        path: str | Path = "civica.duckdb",
        *,
        memory_limit: str = "1GB",
        compact_rows: int = COMPACT_ROWS,
        state_cache: int = STATE_CACHE,
    ) -> None:
        self.compact_rows = compact_rows
        self._states = _StateCache(state_cache)
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Every checkpoint rewrites the entity rows that changed since the last one, which
        # under steady ingest is the whole entity table: checkpoint every 128 MB of WAL
        # rather than DuckDB's 16 MB, so ingest stalls (~0.3 s each) come 8x less often.
        config: dict[str, str | bool | int | float | list[str]] = {
            "memory_limit": memory_limit,
            "checkpoint_threshold": "128MB",
        }
        try:
            self._con = duckdb.connect(self.path, config=config)
        except duckdb.IOException as err:
            reason = str(err).split("\n")[0]
            if "lock" in reason.lower():
                raise DatabaseInUseError(
                    f"the database {self.path} is open in another process (one DuckDB file "
                    "takes one process at a time: is `civica serve` running on it? Stop it "
                    f"first, or use another file). DuckDB said: {reason}"
                ) from err
            raise OSError(f"cannot open the database {self.path}: {reason}") from err
        self._write_lock = threading.Lock()
        self._compact_lock = threading.Lock()  # one compaction at a time
        self._compactor: threading.Thread | None = None
        self._local = threading.local()
        with self._write_lock:
            self._con.execute(_SCHEMA)
            version = self._con.execute("select max(version) from schema_info").fetchall()[0][0]
            if version is None:
                self._con.execute("insert into schema_info values (?)", [SCHEMA_VERSION])
            elif version < SCHEMA_VERSION:
                _migrate(self._con, version)
            counted = self._con.execute("select count(*) from observations_recent").fetchall()
            self._recent_rows = int(counted[0][0])

    # DuckDB connections are not safe to share between threads; a cursor per thread is.
    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._con.cursor()
            self._local.cursor = cur
        return cur

    def tenants(self) -> list[str]:
        rows = (
            self._cursor()
            .execute(f"select tenant from entities union select distinct tenant from {_HISTORY}")
            .fetchall()
        )
        return sorted(r[0] for r in rows)

    def get_entities(
        self, tenant: str, ids: Sequence[str], *, shared: bool = False
    ) -> dict[str, StoredEntity]:
        if not ids:
            return {}
        found: dict[str, StoredEntity] = {}
        missing: list[str] = []
        states = self._states
        for eid in dict.fromkeys(ids):
            hit = states.get(tenant, eid)
            if hit is None:
                missing.append(eid)
            elif shared and hit.stored is not None:
                found[eid] = hit.stored  # the state as written, not parsed again
            else:
                found[eid] = StoredEntity(orjson.loads(hit.doc), hit.created_at, hit.modified_at)
        if not missing:
            return found
        generation = states.generation
        wanted = pa.table({"id": pa.array(missing, pa.string())})
        cur = self._cursor()
        cur.register("wanted_ids", wanted)
        try:
            # Find the rows by key first and fetch their documents after: joining on the
            # documents directly drags every stored document through the join (twice as slow).
            table = _fetch_arrow(
                cur,
                f"select {_STATE_COLUMNS} from entities "
                "where rowid in (select e.rowid from entities e join wanted_ids w "
                "on e.id = w.id where e.tenant = ?)",
                [tenant],
            )
        finally:
            cur.unregister("wanted_ids")
        fetched = _states_of(table)
        with self._write_lock:  # a write since the read made these rows stale for the cache
            if states.generation == generation:
                for state in fetched:
                    states.put(tenant, state)
        for state in fetched:
            found[state.id] = StoredEntity(
                orjson.loads(state.doc), state.created_at, state.modified_at
            )
        return found

    def warm_state_cache(self, limit: int | None = None) -> int:
        """Load the most recently modified states into the state cache; returns how many.

        A server calls this at start-up so the first batches after a restart merge on
        cached states instead of reading each entity back from the table.
        """
        states = self._states
        n = states.capacity if limit is None else min(limit, states.capacity)
        if n <= 0:
            return 0
        generation = states.generation
        table = _fetch_arrow(
            self._cursor(),
            f"select tenant, {_STATE_COLUMNS} from entities order by modified_at desc limit ?",
            [n],
        )
        tenants = table.column("tenant").to_pylist()
        fetched = _states_of(table)
        with self._write_lock:
            if states.generation != generation:
                return 0  # written meanwhile: the cache fills itself from here
            # Oldest first, so the most recent end up at the young end of the cache.
            for tenant, state in zip(reversed(tenants), reversed(fetched), strict=True):
                if states.get(tenant, state.id) is None:
                    states.put(tenant, state)
        return len(fetched)

    def write(
        self, tenant: str, entities: Sequence[StoredEntity], observations: Sequence[Observation]
    ) -> None:
        self.write_prepared([self.prepare_write(tenant, entities, observations)])

    def prepare_write(
        self,
        tenant: str,
        entities: Sequence[StoredEntity],
        observations: Sequence[Observation] | pa.Table,
    ) -> PreparedWrite:
        # Documents, attribute sets, boxes and the observation table: everything that needs
        # no lock, so a caller can do it while another write is in the database.
        # One pass per entity; a known entity's key comes from the cache, not from hashing.
        cached = self._states.get
        dumps = orjson.dumps
        keys: dict[str, int] = {}
        states: list[_CachedState] = []
        for s, box in zip(entities, _bboxes(entities), strict=True):
            entity = s.entity
            eid = entity["id"]
            hit = cached(tenant, eid)
            key = keys[eid] = hit.key if hit is not None else entity_key(tenant, eid)
            names = tuple(attribute_names(entity))
            state = _CachedState(
                eid, str(entity.get("type", "")), dumps(entity).decode(), names, box,
                s.created_at, s.modified_at, key, s,
            )  # fmt: skip
            states.append(state)
        if len(set(keys.values())) != len(keys):
            raise ValueError("two entities of one write share an entity key; nothing was stored")
        if isinstance(observations, pa.Table):
            table = _keyed_readings(tenant, observations, keys) if observations.num_rows else None
        else:
            table = _observation_table(tenant, observations, keys) if observations else None
        # The documents as the common write (readings of known entities, same shape) sends
        # them; write_prepared checks the shape again under its lock.
        same = bool(states) and self._states.same_shape(tenant, states)
        docs = _doc_table(states) if same else None
        return PreparedWrite(tenant, entities, observations, (states, table, docs))

    def write_prepared(self, writes: Sequence[PreparedWrite]) -> None:
        if not writes:
            return
        tenant = writes[0].tenant
        if any(w.tenant != tenant for w in writes):
            raise ValueError("prepared writes of one transaction belong to one tenant")
        # One INSERT OR REPLACE cannot hold a key twice (DuckDB keeps the first): last one wins.
        latest: dict[str, _CachedState] = {}
        tables: list[pa.Table] = []
        for w in writes:
            states, table, _docs = w.payload
            latest.update((state.id, state) for state in states)
            if table is not None:
                tables.append(table)
        states = list(latest.values())
        docs = writes[0].payload[2] if len(writes) == 1 else None
        obs_table = pa.concat_tables(tables) if len(tables) > 1 else next(iter(tables), None)
        rows = 0 if obs_table is None else obs_table.num_rows
        with self._write_lock:
            con = self._con
            # A reading changes an entity's document and modification time only: then only
            # those two columns are updated (DuckDB updates column by column).
            cache = self._states
            same = bool(states) and cache.same_shape(tenant, states)
            cache.generation += 1
            # The whole transaction goes to DuckDB as one script: every execute lets go of
            # the GIL and must win it back, which under load costs more than the statement.
            try:
                script = ["begin"]
                if same:
                    con.register("new_docs", docs if docs is not None else _doc_table(states))
                    script.append(_UPDATE_DOCS)
                elif states:
                    con.register("new_entities", _entity_table(tenant, states))
                    script.extend(_replace_statements(con, cache.classify(tenant, states)))
                if obs_table is not None:
                    con.register("new_observations", obs_table)
                    script.append("insert into observations_recent select * from new_observations")
                script.append("commit")
                con.execute(";\n".join(script))
            except BaseException:
                with contextlib.suppress(duckdb.Error):  # the failed statement may have ended it
                    con.execute("rollback")
                cache.drop(tenant, list(latest))
                raise
            finally:
                for name in ("new_docs", "new_entities", "new_observations"):
                    con.unregister(name)
            cache.put_all(tenant, states)
            self._recent_rows += rows
            if self._recent_rows >= self.compact_rows:
                self._compact_in_background()

    def compact(self) -> None:
        """Move recent observations into the sorted history now (also done automatically)."""
        self._compact()

    def _compact_in_background(self) -> None:
        """Start a compaction in its own thread unless one runs; call with the write lock.

        Writes go on meanwhile: the compaction is one transaction that moves the rows its
        snapshot sees and deletes exactly those (DuckDB's MVCC), so rows appended while it
        sorts stay in ``observations_recent`` and every row is in exactly one table.
        """
        worker = self._compactor
        if worker is not None and worker.is_alive():
            return
        self._compactor = threading.Thread(
            target=self._compact_quietly, name="civica-compaction", daemon=True
        )
        self._compactor.start()

    def _compact_quietly(self) -> None:
        try:
            self._compact()
        except duckdb.Error:  # the next write that finds enough recent rows tries again
            logging.getLogger(__name__).exception("compacting recent observations failed")

    def _compact(self) -> None:
        # Observations arrive interleaved across entities. Moved over in (tenant, key, time)
        # order, each run's row groups cover narrow key ranges, so DuckDB's min/max zone
        # maps skip all but about one row group per run for a single-entity history query.
        with self._compact_lock:
            con = self._con.cursor()
            try:
                con.execute("begin")
                try:
                    con.execute(
                        "insert into observations select * from observations_recent "
                        "order by tenant, entity_key, observed_at"
                    )
                    moved = con.execute("delete from observations_recent").fetchall()[0][0]
                    con.execute("commit")
                except BaseException:
                    with contextlib.suppress(duckdb.Error):
                        con.execute("rollback")
                    raise
            finally:
                con.close()
            with self._write_lock:
                self._recent_rows -= int(moved)

    def delete_entities(self, tenant: str, ids: Sequence[str]) -> list[str]:
        if not ids:
            return []
        with self._write_lock:
            self._states.generation += 1
            self._states.drop(tenant, ids)
            rows = self._con.execute(
                "delete from entities where tenant = ? and list_contains(?, id) returning id",
                [tenant, list(dict.fromkeys(ids))],
            ).fetchall()
        found = {r[0] for r in rows}
        return [i for i in dict.fromkeys(ids) if i in found]

    def query_entities(self, tenant: str, query: EntityQuery) -> EntityPage:
        rows, total = self._entity_rows(tenant, query)
        return EntityPage([_stored(r) for r in rows], total)

    def query_entity_documents(self, tenant: str, query: EntityQuery) -> tuple[list[str], int]:
        rows, total = self._entity_rows(tenant, query)
        return [r[0] for r in rows], total

    def _entity_rows(self, tenant: str, query: EntityQuery) -> tuple[list[tuple[Any, ...]], int]:
        """The page's rows (document, created and modified in us) and the total count."""
        where: list[str] = ["tenant = ?"]
        params: list[Any] = [tenant]
        if query.types is not None:
            where.append("list_contains(?, type)")
            params.append(list(query.types))
        if query.ids is not None:
            where.append("list_contains(?, id)")
            params.append(list(query.ids))
        if query.attrs is not None:
            where.append("list_has_any(attrs, ?)")
            params.append(list(query.attrs))
        box = query.geo.prefilter_bbox() if query.geo is not None else None
        if box is not None:
            if query.geo is not None and query.geo.geoproperty != "location":
                box = None  # only 'location' is indexed by bounding box
            else:
                where.append("min_lon <= ? and max_lon >= ? and min_lat <= ? and max_lat >= ?")
                params.extend([box[2], box[0], box[3], box[1]])
        clause = " and ".join(where)
        cur = self._cursor()
        if query.q is None and query.geo is None and query.id_pattern is None:
            total = cur.execute(f"select count(*) from entities where {clause}", params).fetchall()
            # LIMIT/OFFSET are BIGINT in DuckDB; beyond that no page can hold rows anyway.
            page = [min(query.limit, _MAX_BIGINT), min(query.offset, _MAX_BIGINT)]
            # Sort and cut the page on the keys, then fetch only its documents: sorting with
            # the documents attached drags every stored document through the sort.
            rows = cur.execute(
                "select doc, epoch_us(created_at), epoch_us(modified_at) from entities "
                f"where rowid in (select rowid from entities where {clause} order by id "
                "limit ? offset ?) order by id",
                [*params, *page],
            ).fetchall()
            return rows, int(total[0][0])
        if box is not None and query.q is None and query.id_pattern is None:
            near = _near_point(query)
            if near is not None:
                return self._near_rows(cur, clause, params, query, near)
        sql = (
            "select doc, epoch_us(created_at), epoch_us(modified_at) from entities "
            f"where {clause} order by id"
        )
        hits = [r for r in cur.execute(sql, params).fetchall() if query.matches(_stored(r))]
        return hits[query.offset : query.offset + query.limit], len(hits)

    @staticmethod
    def _near_rows(
        cur: duckdb.DuckDBPyConnection,
        clause: str,
        params: list[Any],
        query: EntityQuery,
        near: tuple[float, float],
    ) -> tuple[list[tuple[Any, ...]], int]:
        """``near`` a point over located rows, measured on the stored boxes, not documents.

        A Point location's box is the point itself, so its distance is the same
        ``haversine_m`` that ``GeoQuery.matches`` computes; only the page's documents are
        fetched. Other shapes (a box with extent) are matched on their documents.
        """
        geo = query.geo
        assert geo is not None
        lon, lat = near
        hi = math.inf if geo.max_distance is None else geo.max_distance
        lo = -math.inf if geo.min_distance is None else geo.min_distance
        table = _fetch_arrow(
            cur,
            f"select rowid, min_lon, min_lat, max_lon, max_lat from entities where {clause} "
            "order by id",
            params,
        )
        col = table.column
        hits: list[int] = []
        shaped: list[int] = []
        for rowid, x0, y0, x1, y1 in zip(
            _values(col("rowid")),
            _values(col("min_lon")),
            _values(col("min_lat")),
            _values(col("max_lon")),
            _values(col("max_lat")),
            strict=True,
        ):
            if x0 != x1 or y0 != y1:
                shaped.append(rowid)
                hits.append(rowid)
            elif lo <= haversine_m(x0, y0, lon, lat) <= hi:
                hits.append(rowid)
        if shaped:  # keep only the shapes that really match (rare: most locations are points)
            rows = cur.execute(
                "select rowid, doc, epoch_us(created_at), epoch_us(modified_at) from entities "
                "where rowid in (select unnest(?))",
                [shaped],
            ).fetchall()
            failed = {r[0] for r in rows if not query.matches(_stored(r[1:]))}
            hits = [h for h in hits if h not in failed]
        page = hits[query.offset : query.offset + query.limit]
        if not page:
            return [], len(hits)
        rows = cur.execute(
            "select doc, epoch_us(created_at), epoch_us(modified_at) from entities "
            "where rowid in (select unnest(?)) order by id",
            [page],
        ).fetchall()
        return rows, len(hits)

    def entity_types(self, tenant: str) -> list[TypeInfo]:
        rows = (
            self._cursor()
            .execute(
                "select type, count(*), list_sort(list_distinct(flatten(list(attrs)))) "
                "from entities where tenant = ? group by type order by type",
                [tenant],
            )
            .fetchall()
        )
        return [TypeInfo(r[0], int(r[1]), tuple(r[2])) for r in rows]

    def query_observations(self, tenant: str, query: ObservationQuery) -> list[Observation]:
        where, params = _observation_filter(tenant, query)
        cols = (
            "entity_id, entity_type, attribute, epoch_us(observed_at) as t, "
            "value_num, value_json, unit"
        )
        base = f"select {cols} from {_HISTORY} where {' and '.join(where)}"
        if query.last_n is not None:
            base = (
                "select entity_id, entity_type, attribute, t, value_num, value_json, unit "
                f"from (select {cols}, row_number() over (partition by "
                f"entity_id, attribute order by observed_at desc) as rn from {_HISTORY} "
                f"where {' and '.join(where)}) where rn <= ?"
            )
            params.append(query.last_n)
        sql = f"{base} order by entity_id, attribute, t limit ?"
        params.append(query.limit)
        rows = self._cursor().execute(sql, params).fetchall()
        wanted = None if query.entity_ids is None else set(query.entity_ids)
        return [
            Observation(r[0], r[1], r[2], _from_us(r[3]), r[4], r[5], r[6])
            for r in rows
            if wanted is None or r[0] in wanted
        ]

    def history_documents(self, tenant: str, query: ObservationQuery) -> HistoryDocuments:
        if query.entity_ids is None or len(query.entity_ids) != 1:
            raise ValueError("history_documents reads the history of one entity")
        eid = query.entity_ids[0]
        where, params = _observation_filter(tenant, query)
        # The id is checked exactly inside the aggregates (only on rows the key selected).
        rows = (
            self._cursor()
            .execute(
                "select attribute, any_value(entity_type) filter (where entity_id = ?), "
                "count(*) filter (where entity_id = ?), "
                f"string_agg({_INSTANCE_JSON}, ',' order by observed_at) "
                "filter (where entity_id = ?) "
                f"from {_HISTORY} where {' and '.join(where)} "
                "group by attribute order by attribute",
                [eid, eid, eid, *params],
            )
            .fetchall()
        )
        found = [r for r in rows if r[2]]
        return HistoryDocuments(
            found[0][1] if found else None,
            [(r[0], f"[{r[3]}]") for r in found],
            sum(int(r[2]) for r in found),
        )

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        table = pa.table(
            {
                "received_at": pa.array([d.received_at for d in letters], _TS),
                "source": [d.source for d in letters],
                "tenant": [d.tenant for d in letters],
                "topic": pa.array([d.topic for d in letters], pa.string()),
                "reason": [d.reason for d in letters],
                "payload": [d.payload for d in letters],
            }
        )
        with self._write_lock:
            self._con.register("new_dead", table)
            self._con.execute("insert into dead_letters select * from new_dead")
            self._con.unregister("new_dead")

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = (
            self._cursor()
            .execute(
                "select epoch_us(received_at), source, tenant, reason, payload, topic "
                "from dead_letters order by received_at desc, rowid desc limit ?",
                [max(limit, 0)],
            )
            .fetchall()
        )
        return [DeadLetter(_from_us(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def count_dead_letters(self) -> int:
        rows = self._cursor().execute("select count(*) from dead_letters").fetchall()
        return int(rows[0][0])

    def put_api_key(self, record: ApiKeyRecord) -> None:
        with self._write_lock:
            self._con.execute(
                "insert or replace into api_keys values (?, ?, ?, ?, ?, ?)",
                [
                    record.key_id,
                    record.key_hash,
                    record.role,
                    record.label,
                    record.created_at,
                    record.revoked,
                ],
            )

    def api_key(self, key_id: str) -> ApiKeyRecord | None:
        row = (
            self._cursor()
            .execute(
                "select key_id, key_hash, role, label, epoch_us(created_at), revoked from api_keys "
                "where key_id = ?",
                [key_id],
            )
            .fetchall()
        )
        return _key(row[0]) if row else None

    def api_keys(self) -> list[ApiKeyRecord]:
        rows = (
            self._cursor()
            .execute(
                "select key_id, key_hash, role, label, epoch_us(created_at), revoked from api_keys "
                "order by created_at, key_id"
            )
            .fetchall()
        )
        return [_key(r) for r in rows]

    def put_subscription(self, tenant: str, sub_id: str, doc: dict[str, Any]) -> None:
        with self._write_lock:
            self._con.execute(
                "insert or replace into subscriptions values (?, ?, ?)",
                [tenant, sub_id, orjson.dumps(doc).decode()],
            )

    def subscriptions(self, tenant: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        sql = "select tenant, doc from subscriptions"
        params: list[Any] = []
        if tenant is not None:
            sql += " where tenant = ?"
            params.append(tenant)
        rows = self._cursor().execute(sql + " order by tenant, id", params).fetchall()
        return [(r[0], orjson.loads(r[1])) for r in rows]

    def delete_subscription(self, tenant: str, sub_id: str) -> bool:
        with self._write_lock:
            rows = self._con.execute(
                "delete from subscriptions where tenant = ? and id = ? returning id",
                [tenant, sub_id],
            ).fetchall()
        return bool(rows)

    def close(self) -> None:
        worker = self._compactor
        if worker is not None:
            worker.join()
        with self._write_lock:
            self._con.close()


# One observation as a normalized NGSI-LD Property instance, rendered by DuckDB. The time
# goes through a plain (zone-less) timestamp of the same UTC instant, so the session's time
# zone never shifts it; doubles print in their shortest round-trip form.
_INSTANCE_JSON = (
    """'{"type":"Property","value":' || coalesce(cast(value_num as varchar), value_json) """
    """|| ',"observedAt":"' || strftime(make_timestamp(epoch_us(observed_at)), """
    """'%Y-%m-%dT%H:%M:%S.%gZ') || '"' || coalesce(',"unitCode":' || to_json(unit), '') """
    """|| '}'"""
)
# Rows are found by entity_key (one integer) rather than (tenant, id): the join on the two
# strings cost about as much as the update itself. Keys are unique: see _replace_statements.
_UPDATE_DOCS = (
    "update entities e set doc = n.doc, modified_at = n.modified_at "
    "from new_docs n where e.entity_key = n.entity_key"
)
_UPDATE_STATES = (
    "update entities e set type = n.type, doc = n.doc, min_lon = n.min_lon, "
    "min_lat = n.min_lat, max_lon = n.max_lon, max_lat = n.max_lat, "
    "created_at = n.created_at, modified_at = n.modified_at "
    "from new_entities n where e.entity_key = n.entity_key"
)


def _observation_filter(tenant: str, query: ObservationQuery) -> tuple[list[str], list[Any]]:
    """The WHERE terms (and their parameters) of an observation query."""
    where: list[str] = ["tenant = ?"]
    params: list[Any] = [tenant]
    if query.entity_ids is not None:
        # Filter on the integer key only: a string predicate on entity_id costs several
        # times the integer scan. Callers check the ids exactly on the rows that come back.
        keys = [entity_key(tenant, e) for e in query.entity_ids]
        if len(keys) == 1:
            where.append("entity_key = ?")
            params.append(keys[0])
        else:
            where.append("list_contains(?, entity_key)")
            params.append(keys)
    if query.types is not None:
        where.append("list_contains(?, entity_type)")
        params.append(list(query.types))
    if query.attrs is not None:
        where.append("list_contains(?, attribute)")
        params.append(list(query.attrs))
    if query.start is not None:
        where.append("observed_at >= ?")
        params.append(query.start)
    if query.end is not None:
        where.append("observed_at < ?")
        params.append(query.end)
    return where, params


def _migrate(con: duckdb.DuckDBPyConnection, version: int) -> None:
    """Bring a database file written by an older Civica to ``SCHEMA_VERSION``, in place."""
    con.execute("begin")
    try:
        if version < 2:  # entities.entity_key, filled for the rows already there
            con.execute("alter table entities add column entity_key bigint")
            rows = _fetch_arrow(con, "select tenant, id from entities", [])
            tenants, ids = _values(rows.column("tenant")), _values(rows.column("id"))
            keys = pa.table(
                {
                    "tenant": pa.array(tenants, pa.string()),
                    "id": pa.array(ids, pa.string()),
                    "entity_key": pa.array(
                        [entity_key(t, i) for t, i in zip(tenants, ids, strict=True)], pa.int64()
                    ),
                }
            )
            con.register("migrated_keys", keys)
            try:
                con.execute(
                    "update entities e set entity_key = k.entity_key from migrated_keys k "
                    "where e.tenant = k.tenant and e.id = k.id"
                )
            finally:
                con.unregister("migrated_keys")
        con.execute("update schema_info set version = ?", [SCHEMA_VERSION])
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


def _replace_statements(
    con: duckdb.DuckDBPyConnection, known: tuple[bool, bool] | None
) -> list[str]:
    """SQL that INSERTs OR REPLACEs the rows of ``new_entities``, the way DuckDB does it cheaply.

    DuckDB rewrites a LIST column (``attrs``) at several times the cost of the rest of the
    row, and INSERT OR REPLACE rewrites every column; a reading rarely changes the attribute
    set. So: update the scalar columns, ``attrs`` only where the set changed, insert new rows.
    ``known`` is (any row missing, any attribute set changed) when the state cache could tell.
    """
    if known is None:
        missing, changed = con.execute(
            "select bool_or(e.id is null), bool_or(e.attrs <> n.attrs) from new_entities n "
            "left join entities e on e.tenant = n.tenant and e.id = n.id"
        ).fetchall()[0]
    else:
        missing, changed = known
    statements = []
    if missing:
        # A new entity whose key another entity already has would make the updates below
        # (by key) touch that other row: refuse the whole write instead (odds about 2^-64).
        statements.append(
            "select case when exists (select 1 from new_entities n join entities e "
            "on e.entity_key = n.entity_key and (e.tenant <> n.tenant or e.id <> n.id)) "
            "then error('two entities share an entity key; this write was not stored') end"
        )
    statements.append(_UPDATE_STATES)
    if changed:
        statements.append(
            "update entities e set attrs = n.attrs from new_entities n "
            "where e.entity_key = n.entity_key and e.attrs <> n.attrs"
        )
    if missing:
        statements.append(
            "insert into entities select n.* from new_entities n "
            "anti join entities e on e.tenant = n.tenant and e.id = n.id"
        )
    return statements


class _CachedState(NamedTuple):
    id: str
    type: str
    doc: str
    attrs: tuple[str, ...]
    bbox: tuple[float, ...] | None
    created_at: datetime
    modified_at: datetime
    key: int  # entity_key(tenant, id): rows are updated by this integer, not by the strings
    # The state as it was written, handed to merges (``get_entities(shared=True)``) instead
    # of parsing ``doc`` again; None when the state was read from the database.
    stored: StoredEntity | None = None


class _StateCache:
    """Recently written or read entity states, by (tenant, id); bounded, oldest out first.

    It only ever holds what the database holds: writes put their rows after the commit,
    deletes and failed writes drop theirs, and a read fills it only if no write happened
    since the read began (``generation``). Callers hold the store's write lock to change it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.generation = 0
        self._rows: dict[tuple[str, str], _CachedState] = {}

    def get(self, tenant: str, eid: str) -> _CachedState | None:
        return self._rows.get((tenant, eid))

    def put(self, tenant: str, state: _CachedState) -> None:
        self.put_all(tenant, (state,))

    def put_all(self, tenant: str, states: Sequence[_CachedState]) -> None:
        if self.capacity <= 0:
            return
        rows = self._rows
        pop = rows.pop
        for state in states:
            key = (tenant, state.id)
            pop(key, None)  # re-inserted at the young end
            rows[key] = state
        if len(rows) > self.capacity:
            excess = len(rows) - self.capacity
            for key in list(itertools.islice(rows, max(excess, self.capacity // 8))):
                del rows[key]

    def drop(self, tenant: str, ids: Iterable[str]) -> None:
        for eid in ids:
            self._rows.pop((tenant, eid), None)

    def classify(self, tenant: str, states: Sequence[_CachedState]) -> tuple[bool, bool] | None:
        """(any id not stored, any attribute set changed), or None if the cache cannot tell."""
        changed = False
        for state in states:
            hit = self._rows.get((tenant, state.id))
            if hit is None:
                return None
            changed = changed or hit.attrs != state.attrs
        return False, changed

    def same_shape(self, tenant: str, states: Sequence[_CachedState]) -> bool:
        """Whether every entity is stored with the same type, attributes, box and creation."""
        rows = self._rows
        for state in states:
            hit = rows.get((tenant, state.id))
            if (
                hit is None
                or hit.attrs != state.attrs
                or hit.bbox != state.bbox
                or hit.type != state.type
                or hit.created_at != state.created_at
            ):
                return False
        return True


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


_fromtimestamp = datetime.fromtimestamp
_FLOAT_EXACT_US = 2**52


def _from_us(micros: int) -> datetime:
    # Twice as fast as epoch + timedelta and exact while |micros| < 2**52 (years 1827-2112):
    # the float quotient is then within 0.12 us and fromtimestamp rounds to the microsecond.
    if -_FLOAT_EXACT_US < micros < _FLOAT_EXACT_US:
        return _fromtimestamp(micros / 1e6, UTC)
    return _EPOCH + timedelta(microseconds=micros)


# Entity timestamps repeat (a batch stamps all its entities alike), so a small cache turns
# most conversions into a lookup; observation times rarely repeat and are not cached.
_entity_time = functools.lru_cache(maxsize=4096)(_from_us)


_STATE_COLUMNS = (
    "id, type, doc, attrs, min_lon, min_lat, max_lon, max_lat, created_at, modified_at, entity_key"
)


def _values(column: Any) -> list[Any]:
    values: list[Any] = column.to_pylist()
    return values


def _near_point(query: EntityQuery) -> tuple[float, float] | None:
    """The reference point of a ``near`` query on ``location``, or None for anything else."""
    geo = query.geo
    if geo is None or geo.georel != "near" or geo.geoproperty != "location":
        return None
    if geo.geometry.get("type") != "Point":
        return None
    lon, lat = geo.geometry["coordinates"][0:2]
    return float(lon), float(lat)


def _fetch_arrow(cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> pa.Table:
    """A query's whole result as one Arrow table (a relation: no DB-API row copy)."""
    rel = cur.sql(sql, params=params)
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    table: pa.Table = fetch()
    return table


def _states_of(table: pa.Table) -> list[_CachedState]:
    """Cache entries from rows of ``_STATE_COLUMNS``, column by column (no tuple per row)."""
    col = table.column
    boxes = [
        None if x0 is None else (x0, y0, x1, y1)
        for x0, y0, x1, y1 in zip(
            col("min_lon").to_pylist(),
            col("min_lat").to_pylist(),
            col("max_lon").to_pylist(),
            col("max_lat").to_pylist(),
            strict=True,
        )
    ]
    created = [_entity_time(t) for t in col("created_at").cast(_TS).cast(pa.int64()).to_pylist()]
    modified = [_entity_time(t) for t in col("modified_at").cast(_TS).cast(pa.int64()).to_pylist()]
    return [
        _CachedState(i, t, d, tuple(a), b, c, m, k)
        for i, t, d, a, b, c, m, k in zip(
            col("id").to_pylist(),
            col("type").to_pylist(),
            col("doc").to_pylist(),
            col("attrs").to_pylist(),
            boxes,
            created,
            modified,
            col("entity_key").to_pylist(),
            strict=True,
        )
    ]


def _stored(row: tuple[Any, ...]) -> StoredEntity:
    entity: Entity = orjson.loads(row[0])
    return StoredEntity(entity, _entity_time(row[1]), _entity_time(row[2]))


def _key(row: tuple[Any, ...]) -> ApiKeyRecord:
    return ApiKeyRecord(row[0], row[1], row[2], row[3], _from_us(row[4]), bool(row[5]))


def _bboxes(entities: Iterable[StoredEntity]) -> list[tuple[float, ...] | None]:
    out: list[tuple[float, ...] | None] = []
    for s in entities:
        loc = s.entity.get("location")
        value = loc.get("value") if isinstance(loc, dict) else None
        out.append(bbox_of(value) if isinstance(value, dict) else None)
    return out


def _entity_table(tenant: str, states: Sequence[_CachedState]) -> pa.Table:
    boxes = [s.bbox for s in states]
    return pa.table(
        {
            "tenant": pa.array([tenant] * len(states), pa.string()),
            "id": pa.array([s.id for s in states], pa.string()),
            "type": pa.array([s.type for s in states], pa.string()),
            "doc": pa.array([s.doc for s in states], pa.string()),
            "attrs": pa.array([s.attrs for s in states], pa.list_(pa.string())),
            "min_lon": pa.array([b[0] if b else None for b in boxes], pa.float64()),
            "min_lat": pa.array([b[1] if b else None for b in boxes], pa.float64()),
            "max_lon": pa.array([b[2] if b else None for b in boxes], pa.float64()),
            "max_lat": pa.array([b[3] if b else None for b in boxes], pa.float64()),
            "created_at": timestamp_array([s.created_at for s in states]),
            "modified_at": timestamp_array([s.modified_at for s in states]),
            "entity_key": pa.array([s.key for s in states], pa.int64()),
        }
    )


def _doc_table(states: Sequence[_CachedState]) -> pa.Table:
    return pa.table(
        {
            "entity_key": pa.array([s.key for s in states], pa.int64()),
            "doc": pa.array([s.doc for s in states], pa.string()),
            "modified_at": timestamp_array([s.modified_at for s in states]),
        }
    )


def _keyed_readings(tenant: str, table: pa.Table, known: Mapping[str, int]) -> pa.Table:
    """A ``READINGS_SCHEMA`` table with the tenant and entity key columns in front."""
    column = table.column("entity_id")
    ids = [str(eid) for eid in pc.unique(column).to_pylist()]
    keys = [known[eid] if eid in known else entity_key(tenant, eid) for eid in ids]
    # Each row's key, looked up in Arrow rather than row by row in Python.
    where = pc.index_in(column, value_set=pa.array(ids, pa.string()))
    row_keys = pc.take(pa.array(keys, pa.int64()), where)
    tenants = pa.repeat(pa.scalar(tenant, pa.string()), table.num_rows)
    return table.add_column(0, "tenant", tenants).add_column(1, "entity_key", row_keys)


def _observation_table(
    tenant: str, rows: Sequence[Observation], known: Mapping[str, int]
) -> pa.Table:
    return _keyed_readings(tenant, readings_table(rows), known)
