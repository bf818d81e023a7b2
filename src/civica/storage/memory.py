"""``MemoryStore``: the Store protocol in plain Python structures, for unit tests."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import orjson
import pyarrow as pa

from civica.core.entity import Entity, Observation
from civica.core.readings import readings_rows
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
from civica.core.temporal import instances, split_series


class MemoryStore:
    """Keeps everything in dicts and lists; same contract as the database backends."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entities: dict[str, dict[str, StoredEntity]] = {}
        self._observations: dict[str, list[Observation]] = {}
        self._dead: list[DeadLetter] = []
        self._keys: dict[str, ApiKeyRecord] = {}
        self._subs: dict[tuple[str, str], dict[str, Any]] = {}

    def tenants(self) -> list[str]:
        with self._lock:
            held = {t for t, table in self._entities.items() if table}
            held |= {t for t, rows in self._observations.items() if rows}
            return sorted(held)

    def get_entities(
        self, tenant: str, ids: Sequence[str], *, shared: bool = False
    ) -> dict[str, StoredEntity]:
        # Always copies: the unit tests that run on this backend then catch a caller that
        # changes what it was given.
        with self._lock:
            table = self._entities.get(tenant, {})
            return {i: _copy(table[i]) for i in ids if i in table}

    def write(
        self, tenant: str, entities: Sequence[StoredEntity], observations: Sequence[Observation]
    ) -> None:
        with self._lock:
            table = self._entities.setdefault(tenant, {})
            for stored in entities:
                table[stored.id] = _copy(stored)
            self._observations.setdefault(tenant, []).extend(observations)

    def prepare_write(
        self,
        tenant: str,
        entities: Sequence[StoredEntity],
        observations: Sequence[Observation] | pa.Table,
    ) -> PreparedWrite:
        rows = readings_rows(observations) if isinstance(observations, pa.Table) else observations
        return PreparedWrite(tenant, list(entities), list(rows))

    def write_prepared(self, writes: Sequence[PreparedWrite]) -> None:
        with self._lock:
            for w in writes:
                rows = w.observations
                self.write(w.tenant, w.entities, [] if isinstance(rows, pa.Table) else rows)

    def delete_entities(self, tenant: str, ids: Sequence[str]) -> list[str]:
        with self._lock:
            table = self._entities.get(tenant, {})
            return [i for i in dict.fromkeys(ids) if table.pop(i, None) is not None]

    def query_entities(self, tenant: str, query: EntityQuery) -> EntityPage:
        with self._lock:
            items = sorted(self._entities.get(tenant, {}).values(), key=lambda s: s.id)
            hits = [s for s in items if query.matches(s)]
            page = hits[query.offset : query.offset + query.limit]
            return EntityPage([_copy(s) for s in page], len(hits))

    def history_documents(self, tenant: str, query: ObservationQuery) -> HistoryDocuments:
        rows = self.query_observations(tenant, dataclasses.replace(query, last_n=None, limit=2**62))
        series = split_series(rows)
        only = next(iter(series.values()), {})
        return HistoryDocuments(
            rows[0].entity_type if rows else None,
            [(name, orjson.dumps(instances(rs)).decode()) for name, rs in only.items()],
            len(rows),
        )

    def query_entity_documents(self, tenant: str, query: EntityQuery) -> tuple[list[str], int]:
        page = self.query_entities(tenant, query)
        return [orjson.dumps(s.entity).decode() for s in page.items], page.total

    def entity_types(self, tenant: str) -> list[TypeInfo]:
        with self._lock:
            found: dict[str, tuple[int, set[str]]] = {}
            for s in self._entities.get(tenant, {}).values():
                count, attrs = found.get(s.type, (0, set()))
                attrs.update(k for k in s.entity if k not in ("id", "type"))
                found[s.type] = (count + 1, attrs)
            return [TypeInfo(t, c, tuple(sorted(a))) for t, (c, a) in sorted(found.items())]

    def query_observations(self, tenant: str, query: ObservationQuery) -> list[Observation]:
        with self._lock:
            rows = [o for o in self._observations.get(tenant, []) if _obs_matches(o, query)]
        rows.sort(key=lambda o: (o.entity_id, o.attribute, o.observed_at))
        if query.last_n is not None:
            groups: dict[tuple[str, str], list[Observation]] = {}
            for o in rows:
                groups.setdefault((o.entity_id, o.attribute), []).append(o)
            rows = [o for g in groups.values() for o in g[-query.last_n :]]
        return rows[: query.limit]

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        with self._lock:
            self._dead.extend(letters)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            # Newest by received_at (not by arrival); among equal times the later-added first.
            newest = sorted(reversed(self._dead), key=lambda d: d.received_at, reverse=True)
            return newest[: max(limit, 0)]

    def count_dead_letters(self) -> int:
        with self._lock:
            return len(self._dead)

    def put_api_key(self, record: ApiKeyRecord) -> None:
        with self._lock:
            self._keys[record.key_id] = record

    def api_key(self, key_id: str) -> ApiKeyRecord | None:
        with self._lock:
            return self._keys.get(key_id)

    def api_keys(self) -> list[ApiKeyRecord]:
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: (k.created_at, k.key_id))

    def put_subscription(self, tenant: str, sub_id: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._subs[(tenant, sub_id)] = copy.deepcopy(doc)

    def subscriptions(self, tenant: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return [
                (t, copy.deepcopy(d))
                for (t, _), d in sorted(self._subs.items())
                if tenant is None or t == tenant
            ]

    def delete_subscription(self, tenant: str, sub_id: str) -> bool:
        with self._lock:
            return self._subs.pop((tenant, sub_id), None) is not None

    def close(self) -> None:
        pass


def _copy(stored: StoredEntity) -> StoredEntity:
    entity: Entity = copy.deepcopy(stored.entity)
    return StoredEntity(entity, stored.created_at, stored.modified_at)


def _obs_matches(o: Observation, q: ObservationQuery) -> bool:
    if q.entity_ids is not None and o.entity_id not in q.entity_ids:
        return False
    if q.types is not None and o.entity_type not in q.types:
        return False
    if q.attrs is not None and o.attribute not in q.attrs:
        return False
    if q.start is not None and o.observed_at < q.start:
        return False
    return not (q.end is not None and o.observed_at >= q.end)
