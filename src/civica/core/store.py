"""The ``Store`` protocol: what every database backend provides, and the records it holds."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa

from civica.core.entity import Entity, Observation
from civica.core.geo import GeoQuery
from civica.core.query import Query

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class StoredEntity:
    """An entity's current state with its system timestamps."""

    entity: Entity
    created_at: datetime
    modified_at: datetime

    @property
    def id(self) -> str:
        return str(self.entity["id"])

    @property
    def type(self) -> str:
        return str(self.entity.get("type", ""))


@dataclass(frozen=True)
class EntityQuery:
    """A query over current entity state (NGSI-LD 'Query Entities')."""

    types: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = None
    id_pattern: str | None = None
    attrs: tuple[str, ...] | None = None  # entities having at least one of them
    q: Query | None = None
    geo: GeoQuery | None = None
    limit: int = 20
    offset: int = 0

    @property
    def needs_python_filter(self) -> bool:
        return self.q is not None or self.geo is not None or self.attrs is not None

    def matches(self, stored: StoredEntity) -> bool:
        """The full predicate; backends may pre-filter in SQL but must agree with this."""
        entity = stored.entity
        if self.types is not None and entity.get("type") not in self.types:
            return False
        if self.ids is not None and entity["id"] not in self.ids:
            return False
        if self.id_pattern is not None and not re.fullmatch(self.id_pattern, entity["id"]):
            return False
        if self.attrs is not None and not any(a in entity for a in self.attrs):
            return False
        if self.q is not None and not self.q.matches(entity):
            return False
        return not (self.geo is not None and not self.geo.matches(entity))


@dataclass(frozen=True)
class EntityPage:
    items: list[StoredEntity]
    total: int


@dataclass(frozen=True)
class PreparedWrite:
    """A ``write`` encoded ahead of time; ``payload`` is the backend's own."""

    tenant: str
    entities: Sequence[StoredEntity]
    observations: Sequence[Observation] | pa.Table
    payload: Any = None


@dataclass(frozen=True)
class HistoryDocuments:
    """See ``Store.history_documents``."""

    entity_type: str | None  # None when the window holds no instance
    attributes: list[tuple[str, str]]  # (attribute, JSON array of its instances)
    instances: int


@dataclass(frozen=True)
class ObservationQuery:
    """A query over the temporal history; times are UTC, ``end`` exclusive."""

    entity_ids: tuple[str, ...] | None = None
    types: tuple[str, ...] | None = None
    attrs: tuple[str, ...] | None = None
    start: datetime | None = None
    end: datetime | None = None
    last_n: int | None = None  # the newest N per entity and attribute
    limit: int = 1_000_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not be accepted, kept with the reason so nothing is silently lost."""

    received_at: datetime
    source: str  # "http" | "mqtt" | "replay"
    tenant: str
    reason: str
    payload: str
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    key_hash: str
    role: str
    label: str
    created_at: datetime
    revoked: bool = False


@dataclass(frozen=True)
class TypeInfo:
    type: str
    count: int
    attributes: tuple[str, ...] = field(default_factory=tuple)


class Store(Protocol):
    """One database for the whole platform. Writes are batched; reads are by tenant."""

    def tenants(self) -> list[str]: ...

    def get_entities(
        self, tenant: str, ids: Sequence[str], *, shared: bool = False
    ) -> dict[str, StoredEntity]:
        """The stored states of ``ids`` that exist.

        ``shared=True`` promises that the caller never changes the returned documents (the
        ingest merge builds new ones), so a backend may hand out the objects it keeps.
        """

    def write(
        self,
        tenant: str,
        entities: Sequence[StoredEntity],
        observations: Sequence[Observation],
    ) -> None:
        """Insert or replace entity states and append observations, in one transaction."""
        ...

    def prepare_write(
        self,
        tenant: str,
        entities: Sequence[StoredEntity],
        observations: Sequence[Observation] | pa.Table,
    ) -> PreparedWrite:
        """Do the work of a ``write`` that needs no lock (encoding), for ``write_prepared``.

        ``observations`` may come as one table of ``civica.core.readings.READINGS_SCHEMA``.
        """
        ...

    def write_prepared(self, writes: Sequence[PreparedWrite]) -> None:
        """Apply prepared writes of one tenant, in order, in one transaction."""
        ...

    def delete_entities(self, tenant: str, ids: Sequence[str]) -> list[str]:
        """Delete current states; return the ids that existed. History is kept."""
        ...

    def query_entities(self, tenant: str, query: EntityQuery) -> EntityPage: ...

    def query_entity_documents(self, tenant: str, query: EntityQuery) -> tuple[list[str], int]:
        """The page of ``query_entities`` as the entities' JSON documents, and the total.

        Lets the API answer the commonest query (core context, no projection, no options)
        without decoding and re-encoding every entity.
        """
        ...

    def entity_types(self, tenant: str) -> list[TypeInfo]: ...

    def query_observations(self, tenant: str, query: ObservationQuery) -> list[Observation]:
        """Observations ordered by entity, attribute, time."""
        ...

    def history_documents(self, tenant: str, query: ObservationQuery) -> HistoryDocuments:
        """One entity's history (``query.entity_ids`` names one) as NGSI-LD JSON, per attribute.

        Each attribute's instances are one JSON array of normalized Property instances
        (type, value, observedAt, unitCode), oldest first: what the temporal API sends for a
        plain history, built without one Python object per instance. ``last_n`` and
        ``limit`` are not applied: the caller checks ``instances`` against its own bound.
        """
        ...

    def add_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]: ...

    def count_dead_letters(self) -> int: ...

    def put_api_key(self, record: ApiKeyRecord) -> None: ...

    def api_key(self, key_id: str) -> ApiKeyRecord | None: ...

    def api_keys(self) -> list[ApiKeyRecord]: ...

    def put_subscription(self, tenant: str, sub_id: str, doc: dict[str, Any]) -> None: ...

    def subscriptions(self, tenant: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(tenant, subscription) pairs, of one tenant or all."""
        ...

    def delete_subscription(self, tenant: str, sub_id: str) -> bool: ...

    def close(self) -> None: ...
