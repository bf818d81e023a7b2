"""The one write path: parse → privacy gate → merge with stored state → store → event bus.

HTTP handlers and the MQTT consumer both call ``Ingest``; nothing writes to the store
another way. Writes are serialised by one lock (read-merge-write must not interleave) and
batched: a batch of 1,000 entities is one store transaction.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from civica.core.bus import EntityChanged, EventBus, ObservationsAdded
from civica.core.clock import Clock, SystemClock
from civica.core.entity import (
    ID_AND_TYPE,
    Entity,
    Observation,
    check_entity_id,
    merge_attribute,
    observations,
    parse_attribute,
    parse_attributes,
    parse_entity,
)
from civica.core.ldcontext import CORE, LdContext
from civica.core.problems import (
    ALREADY_EXISTS,
    WRITE_NOT_STORED,
    Problem,
    bad_request,
    not_found,
)
from civica.core.store import PreparedWrite, Store, StoredEntity
from civica.ingest.admission import AdmissionPool, admit, admit_all, admit_body
from civica.privacy.gate import PrivacyGate


@dataclass
class BatchOutcome:
    """What a batch did: ids created, ids updated, and per-entity errors."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    errors: list[tuple[str | None, Problem]] = field(default_factory=list)

    @property
    def success(self) -> list[str]:
        return self.created + self.updated


@dataclass
class _Change:
    stored: StoredEntity
    # What the writes sent, in order (for observations and notifications): one per document,
    # so an entity sent twice in a batch keeps both readings.
    fragments: list[Entity]
    created: bool


@dataclass
class _UpsertJob:
    """One caller's upsert, waiting to be combined with others into one transaction."""

    tenant: str
    entities: list[Entity]
    replace: bool
    readings: pa.Table | None  # the entities' observation rows, when admission made them
    outcome: BatchOutcome = field(default_factory=BatchOutcome)
    taken: bool = False  # merged into a group by some caller
    sequence: int = 0  # the merged group it belongs to
    written: bool = False  # stored; its events are being published
    finished: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None


class Ingest:
    """Validates, gates and stores entity writes; publishes ``EntityChanged`` events."""

    def __init__(
        self,
        store: Store,
        gate: PrivacyGate | None = None,
        bus: EventBus | None = None,
        clock: Clock | None = None,
        admission: AdmissionPool | None = None,
    ) -> None:
        self.store = store
        self.admission = admission
        self.gate = gate or PrivacyGate()
        self.bus = bus or EventBus()
        self.clock = clock or SystemClock()
        self._lock = threading.Lock()  # merging: reading states and combining writes
        self._write_order = threading.Lock()  # writing merged groups, in merge order
        self._publish_order = threading.Lock()  # publishing written groups, in write order
        self._queue_lock = threading.Lock()
        self._queue: list[_UpsertJob] = []
        self._to_write: list[_Merged] = []  # merged, in merge order, waiting for the writer
        self._pending_lock = threading.Lock()
        # States merged but not written yet, by (tenant, id): the next group merges on these.
        self._pending: dict[tuple[str, str], StoredEntity] = {}
        self._merged_groups = 0
        self._broken = 0  # groups merged up to this one fail: an earlier write failed

    # ---- parsing -------------------------------------------------------------------------
    def admit(self, doc: Any, ctx: LdContext = CORE, key_values: bool | None = None) -> Entity:
        """Parse and gate one entity document; raise a Problem if it is refused."""
        return admit(self.gate, doc, ctx, key_values)

    def _admit_all(
        self, docs: Sequence[Any], ctx: LdContext, key_values: bool | None
    ) -> tuple[list[Entity], list[tuple[str | None, Problem]]]:
        return admit_all(self.gate, docs, ctx, key_values)

    # ---- batch operations ----------------------------------------------------------------
    def upsert(
        self,
        tenant: str,
        docs: Sequence[Any],
        ctx: LdContext = CORE,
        *,
        key_values: bool | None = False,
        replace: bool = False,
    ) -> BatchOutcome:
        """Create missing entities; update (or replace) existing ones."""
        entities, errors = self._admit_all(docs, ctx, key_values)
        out = self.upsert_entities(tenant, entities, replace=replace)
        out.errors[:0] = errors
        return out

    def upsert_body(
        self,
        tenant: str,
        raw: bytes,
        *,
        key_values: bool | None = False,
        replace: bool = False,
        max_batch: int = 10_000,
    ) -> BatchOutcome:
        """``upsert`` of a JSON batch body in the core context, admitted by the worker
        processes of ``admission`` when there are some (else here). ``key_values`` None
        decides per entity, as ``upsert`` does."""
        readings = None
        if self.admission is not None:
            entities, errors, readings = self.admission.admit_body(raw, key_values, max_batch)
        else:
            entities, errors = admit_body(self.gate, raw, key_values, max_batch)
        out = self.upsert_entities(tenant, entities, replace=replace, readings=readings)
        out.errors[:0] = errors
        return out

    def upsert_entities(
        self,
        tenant: str,
        entities: Sequence[Entity],
        *,
        replace: bool = False,
        readings: pa.Table | None = None,
    ) -> BatchOutcome:
        """Upsert entities that already passed ``admit`` (parsing and the privacy gate).

        Concurrent upserts are combined and pipelined in two stages. Merge: the caller that
        gets the merge lock takes every batch queued behind its own, merges them on the
        stored states and on the states merged but not yet written, and queues the result
        for writing. Write: the caller that gets the write lock writes everything queued for
        writing, in merge order, in one transaction per tenant. Each caller gets its own
        outcome. So one group merges while another is in the database (which releases the
        GIL while it works), and a transaction of several thousand entities costs DuckDB
        about half as much per entity as one of a thousand.
        """
        return self.begin_upsert(tenant, entities, replace=replace, readings=readings).finish()

    def begin_upsert(
        self,
        tenant: str,
        entities: Sequence[Entity],
        *,
        replace: bool = False,
        readings: pa.Table | None = None,
    ) -> BegunUpsert:
        """Merge an upsert now, in this thread; ``finish`` writes it (in any thread).

        Upserts begun one after another are written in that order, each merged on the ones
        before. So a caller with a stream of batches (the MQTT consumer) merges the next
        batch while another thread finishes this one, whose database work lets go of the GIL.
        """
        job = _UpsertJob(tenant, list(entities), replace, readings)
        with self._queue_lock:
            self._queue.append(job)
        with self._lock:
            if not job.taken:
                with self._queue_lock:
                    jobs, self._queue = self._queue, []
                for queued in jobs:
                    queued.taken = True
                merged = self._merge_group(jobs)
                with self._queue_lock:
                    self._to_write.extend(merged)
        return BegunUpsert(self, job)

    def _finish(self, job: _UpsertJob) -> BatchOutcome:
        """Write (with whatever was merged before it), publish, and give the job's outcome."""
        written: list[_Merged] | None = None
        with self._write_order:
            if not job.finished.is_set() and not job.written:
                with self._queue_lock:
                    parts, self._to_write = self._to_write, []
                written = self._write_parts(parts)
                # Publish outside the write stage, so the next group can be written meanwhile;
                # taking the publish lock before letting go of the write lock keeps the
                # events in write order.
                self._publish_order.acquire()
        if written is not None:
            try:
                self._publish_written(written)
            finally:
                self._publish_order.release()
        job.finished.wait()
        if job.failure is not None:
            raise job.failure
        return job.outcome

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Every lock: no merge may start, no group is being written or has events pending."""
        with self._lock, self._write_order, self._publish_order:
            yield

    def _merge_group(self, jobs: list[_UpsertJob]) -> list[_Merged]:
        """Merge queued upserts on stored and pending states; call with the merge lock."""
        self._merged_groups += 1
        by_tenant: dict[str, list[_UpsertJob]] = {}
        for job in jobs:
            job.sequence = self._merged_groups
            by_tenant.setdefault(job.tenant, []).append(job)
        merged: list[_Merged] = []
        for tenant, part in by_tenant.items():
            try:
                ids = list(dict.fromkeys(e["id"] for job in part for e in job.entities))
                pending = self._pending
                current = {i: pending[(tenant, i)] for i in ids if (tenant, i) in pending}
                unknown = [i for i in ids if i not in current]
                if unknown:
                    current.update(self.store.get_entities(tenant, unknown, shared=True))
                changes: dict[str, _Change] = {}
                now = self.clock.now()
                for job in part:
                    self._merge_upsert(job, current, changes, now)
                with self._pending_lock:
                    for eid, change in changes.items():
                        pending[(tenant, eid)] = change.stored
                # The readings and the store's encoding are done here, outside the write
                # stage, the busier of the two.
                tables = [job.readings for job in part if job.readings is not None]
                rows: list[Observation] | pa.Table
                if len(tables) == len(part) and not any(job.outcome.errors for job in part):
                    # Made by the admission workers: every admitted entity was merged.
                    rows = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
                else:
                    rows = _readings(changes.values(), now)
                prepared = self.store.prepare_write(
                    tenant, [c.stored for c in changes.values()], rows
                )
                merged.append(_Merged(tenant, part, changes, self._merged_groups, prepared))
            except BaseException as err:  # every caller of the part sees the failure
                for job in part:
                    job.failure = err
                    job.finished.set()
        return merged

    def _write_parts(self, parts: list[_Merged]) -> list[_Merged]:
        """Store merged parts, one transaction per tenant; call with the write lock.

        Returns the parts written; their callers are told (``finished``) once their events
        are published (``_publish_written``). Callers of parts that failed are told now.
        """
        by_tenant: dict[str, list[_Merged]] = {}
        for part in parts:
            by_tenant.setdefault(part.tenant, []).append(part)
        written: list[_Merged] = []
        for tenant, mine in by_tenant.items():
            jobs = [job for part in mine for job in part.jobs]
            stored = False
            try:
                if any(part.sequence <= self._broken for part in mine):
                    raise Problem(
                        WRITE_NOT_STORED,
                        "not stored: the write of an earlier batch these entities were merged "
                        "with failed; send the batch again",
                    )
                self.store.write_prepared([part.prepared for part in mine])
                stored = True
            except BaseException as err:
                # Later groups merged on top of these states: they must not be written either.
                self._broken = self._merged_groups
                for job in jobs:
                    job.failure = err
            finally:
                with self._pending_lock:
                    pending = self._pending
                    for part in mine:
                        for eid, change in part.changes.items():
                            if pending.get((tenant, eid)) is change.stored:
                                del pending[(tenant, eid)]
                for job in jobs:
                    if stored:
                        job.written = True
                    else:
                        job.finished.set()
            if stored:
                written.extend(mine)
        return written

    def _publish_written(self, written: list[_Merged]) -> None:
        """Publish the events of written parts, in write order, then tell their callers."""
        for part in written:
            try:
                self._publish(part.tenant, list(part.changes.values()), part.prepared.observations)
            except BaseException as err:  # stored, but a subscriber failed: its callers hear it
                for job in part.jobs:
                    job.failure = err
            finally:
                for job in part.jobs:
                    job.finished.set()

    @staticmethod
    def _merge_upsert(
        job: _UpsertJob,
        current: dict[str, StoredEntity],
        changes: dict[str, _Change],
        now: Any,
    ) -> None:
        out = job.outcome
        mine: dict[str, bool] = {}  # id -> created by this job
        replace = job.replace
        for entity in job.entities:
            eid = entity["id"]
            change = changes.get(eid)
            prev = change.stored if change is not None else current.get(eid)
            if prev is None:
                stored = StoredEntity(entity, now, now)
            elif prev.type != entity["type"]:
                out.errors.append((eid, _type_clash(eid, prev.type, entity["type"])))
                continue
            elif replace:
                stored = StoredEntity(entity, prev.created_at, now)
            else:
                stored = StoredEntity({**prev.entity, **entity}, prev.created_at, now)
            if eid not in mine:
                mine[eid] = prev is None
            fragments = [entity] if change is None else [*change.fragments, entity]
            changes[eid] = _Change(stored, fragments, eid not in current)
        for eid, created in mine.items():
            (out.created if created else out.updated).append(eid)

    def create(
        self,
        tenant: str,
        docs: Sequence[Any],
        ctx: LdContext = CORE,
        *,
        key_values: bool | None = False,
    ) -> BatchOutcome:
        """Create entities; an id that exists already is an AlreadyExists error."""
        entities, errors = self._admit_all(docs, ctx, key_values)
        out = BatchOutcome(errors=errors)
        with self._exclusive():
            current = self.store.get_entities(tenant, [e["id"] for e in entities])
            now = self.clock.now()
            changes: dict[str, _Change] = {}
            for entity in entities:
                eid = entity["id"]
                if eid in current or eid in changes:
                    out.errors.append((eid, Problem(ALREADY_EXISTS, f"entity {eid} exists")))
                    continue
                changes[eid] = _Change(StoredEntity(entity, now, now), [entity], True)
            self._commit(tenant, list(changes.values()), now)
        out.created = list(changes)
        return out

    def update(
        self,
        tenant: str,
        docs: Sequence[Any],
        ctx: LdContext = CORE,
        *,
        key_values: bool | None = False,
        no_overwrite: bool = False,
    ) -> BatchOutcome:
        """Update existing entities' attributes; a missing entity is a ResourceNotFound error."""
        entities, errors = self._admit_all(docs, ctx, key_values)
        out = BatchOutcome(errors=errors)
        with self._exclusive():
            current = self.store.get_entities(tenant, [e["id"] for e in entities])
            now = self.clock.now()
            changes: dict[str, _Change] = {}
            for entity in entities:
                eid = entity["id"]
                prev = changes[eid].stored if eid in changes else current.get(eid)
                if prev is None:
                    out.errors.append((eid, not_found(f"entity {eid} does not exist")))
                    continue
                if prev.type != entity["type"]:
                    out.errors.append((eid, _type_clash(eid, prev.type, entity["type"])))
                    continue
                attrs = {k: v for k, v in entity.items() if k not in ("id", "type")}
                if no_overwrite:
                    attrs = {k: v for k, v in attrs.items() if k not in prev.entity}
                fragment = {"id": eid, "type": prev.type, **attrs}
                stored = StoredEntity({**prev.entity, **attrs}, prev.created_at, now)
                earlier = changes[eid].fragments if eid in changes else []
                changes[eid] = _Change(stored, [*earlier, fragment], False)
            self._commit(tenant, list(changes.values()), now)
        out.updated = list(changes)
        return out

    def delete(self, tenant: str, ids: Sequence[Any]) -> BatchOutcome:
        out = BatchOutcome()
        valid: list[str] = []
        for raw in ids:
            try:
                valid.append(check_entity_id(raw))
            except Problem as err:
                out.errors.append((raw if isinstance(raw, str) else None, err))
        with self._exclusive():
            current = self.store.get_entities(tenant, valid)
            deleted = self.store.delete_entities(tenant, valid)
        gone = set(deleted)
        for eid in valid:
            if eid not in gone:
                out.errors.append((eid, not_found(f"entity {eid} does not exist")))
        out.updated = deleted
        for eid in deleted:
            stored = current.get(eid)
            if stored is not None:
                self.bus.publish(EntityChanged(tenant, stored.entity, frozenset(), False, True))
        return out

    # ---- single-entity operations --------------------------------------------------------
    def _existing(self, tenant: str, eid: str) -> StoredEntity:
        found = self.store.get_entities(tenant, [check_entity_id(eid)]).get(eid)
        if found is None:
            raise not_found(f"entity {eid} does not exist")
        return found

    def replace_entity(self, tenant: str, eid: str, doc: Any, ctx: LdContext = CORE) -> None:
        if not isinstance(doc, dict):
            raise bad_request("an entity must be a JSON object")
        doc = {**doc, "id": doc.get("id", eid)}
        if doc["id"] != eid:
            raise bad_request("the id in the body differs from the id in the path")
        with self._exclusive():
            prev = self._existing(tenant, eid)
            doc.setdefault("type", prev.type)
            entity = self.gate.admit(parse_entity(doc, ctx))
            if entity["type"] != prev.type:
                raise _type_clash(eid, prev.type, entity["type"])
            now = self.clock.now()
            stored = StoredEntity(entity, prev.created_at, now)
            self._commit(tenant, [_Change(stored, [entity], False)], now)

    def write_attributes(
        self,
        tenant: str,
        eid: str,
        fragment: Any,
        ctx: LdContext = CORE,
        *,
        key_values: bool = False,
        mode: str = "append",
    ) -> list[str]:
        """POST (append, or noOverwrite) / PATCH (update: existing only) attributes.

        Returns the names *not* updated.
        """
        if not isinstance(fragment, dict):
            raise bad_request("attributes must be a JSON object")
        attrs = parse_attributes(fragment, ctx, key_values=key_values)
        if not attrs:
            raise bad_request("no attributes given")
        with self._exclusive():
            prev = self._existing(tenant, eid)
            spec = self.gate.type_spec(prev.type)
            attrs = self.gate.admit_attributes(spec, attrs)
            skipped: list[str] = []
            if mode == "update":
                skipped = [k for k in attrs if k not in prev.entity]
            elif mode == "noOverwrite":
                skipped = [k for k in attrs if k in prev.entity]
            attrs = {k: v for k, v in attrs.items() if k not in skipped}
            if attrs:
                now = self.clock.now()
                stored = StoredEntity({**prev.entity, **attrs}, prev.created_at, now)
                fragment_entity = {"id": eid, "type": prev.type, **attrs}
                self._commit(tenant, [_Change(stored, [fragment_entity], False)], now)
        return [ctx.from_canonical(k) for k in skipped]

    def patch_attribute(
        self,
        tenant: str,
        eid: str,
        name: str,
        fragment: Any,
        ctx: LdContext = CORE,
        *,
        replace: bool = False,
    ) -> None:
        """PATCH (partial) or PUT (replace) one attribute, which must exist."""
        if not isinstance(fragment, dict):
            raise bad_request("an attribute must be a JSON object")
        canonical = ctx.to_canonical(name)
        with self._exclusive():
            prev = self._existing(tenant, eid)
            old = prev.entity.get(canonical)
            if old is None or canonical in ("id", "type"):  # members, not attributes
                raise not_found(f"entity {eid} has no attribute {name!r}")
            renamed = {
                (
                    k
                    if k in ("type", "value", "object", "observedAt", "unitCode", "languageMap")
                    else ctx.to_canonical(k)
                ): v
                for k, v in fragment.items()
            }
            raw = renamed if replace else merge_attribute(old, renamed)
            attr = parse_attribute(canonical, raw, CORE, 0)
            spec = self.gate.type_spec(prev.type)
            attr = self.gate.admit_attributes(spec, {canonical: attr})[canonical]
            now = self.clock.now()
            stored = StoredEntity({**prev.entity, canonical: attr}, prev.created_at, now)
            frag = {"id": eid, "type": prev.type, canonical: attr}
            self._commit(tenant, [_Change(stored, [frag], False)], now)

    def delete_attribute(self, tenant: str, eid: str, name: str, ctx: LdContext = CORE) -> None:
        canonical = ctx.to_canonical(name)
        with self._exclusive():
            prev = self._existing(tenant, eid)
            if canonical not in prev.entity or canonical in ("id", "type"):
                raise not_found(f"entity {eid} has no attribute {name!r}")
            entity = {k: v for k, v in prev.entity.items() if k != canonical}
            now = self.clock.now()
            stored = StoredEntity(entity, prev.created_at, now)
            self.store.write(tenant, [stored], [])
        self.bus.publish(EntityChanged(tenant, entity, frozenset({canonical}), False))

    # ---- commit ----------------------------------------------------------------------------
    def _commit(self, tenant: str, changes: list[_Change], now: Any) -> None:
        if not changes:
            return
        rows = _readings(changes, now)
        self.store.write(tenant, [c.stored for c in changes], rows)
        self._publish(tenant, changes, rows)

    def _publish(
        self, tenant: str, changes: list[_Change], rows: Sequence[Observation] | pa.Table
    ) -> None:
        if isinstance(rows, pa.Table):
            if rows.num_rows:
                self.bus.publish(ObservationsAdded(tenant, table=rows))
        elif rows:
            self.bus.publish(ObservationsAdded(tenant, tuple(rows)))
        events = []
        for c in changes:
            changed = frozenset().union(*c.fragments).difference(ID_AND_TYPE)
            events.append(EntityChanged(tenant, c.stored.entity, changed, c.created))
        self.bus.publish_all(events)


class BegunUpsert:
    """An upsert merged by ``Ingest.begin_upsert``, waiting to be written."""

    def __init__(self, ingest: Ingest, job: _UpsertJob) -> None:
        self._ingest = ingest
        self._job = job

    def finish(self) -> BatchOutcome:
        """Write it (and what was merged before it, if not written yet); its outcome.

        Raises what failed the write, as ``upsert_entities`` does.
        """
        return self._ingest._finish(self._job)

    def abandon(self) -> BatchOutcome:
        """``finish``, but refuse the write: an upsert begun before this one failed.

        It and every upsert merged with or before it and not written yet fail with
        ``WriteNotStored`` (raised here), so the caller can send them again in order. If a
        concurrent caller's write stage has already written it, its outcome is returned.
        """
        ingest = self._ingest
        with ingest._write_order:
            ingest._broken = max(ingest._broken, self._job.sequence)
        return self.finish()


@dataclass
class _Merged:
    """One tenant's part of a merged group, waiting for its turn to be written."""

    tenant: str
    jobs: list[_UpsertJob]
    changes: dict[str, _Change]
    sequence: int
    prepared: PreparedWrite


def _readings(changes: Iterable[_Change], now: Any) -> list[Observation]:
    """The observation rows of what the writes sent (every fragment, in order)."""
    rows: list[Observation] = []
    for change in changes:
        for fragment in change.fragments:
            rows.extend(observations(fragment, now))
    return rows


def _type_clash(eid: str, old: str, new: str) -> Problem:
    return bad_request(f"entity {eid} has type {old!r}; it cannot be written as {new!r}")
