"""The in-process event bus: ingest publishes entity changes, consumers subscribe.

Handlers run on the publisher's thread and must be quick (enqueue, don't do I/O).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from civica.core.entity import Entity, Observation
from civica.core.readings import readings_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EntityChanged:
    """An entity's state after a write, and which attributes the write touched."""

    tenant: str
    entity: Entity
    changed: frozenset[str]
    created: bool
    deleted: bool = False


class ObservationsAdded:
    """Every observation row one write stored, in arrival order: what streaming detectors read.

    ``EntityChanged`` carries only an entity's state after the write, so when one batch holds
    several readings of the same sensor only the last would be seen; this event loses none.
    A write that stored its readings as one table (``civica.core.readings``) passes the table,
    and the rows are made the first time a consumer asks for them.
    """

    __slots__ = ("_rows", "_table", "tenant")

    def __init__(
        self,
        tenant: str,
        rows: tuple[Observation, ...] | None = None,
        *,
        table: pa.Table | None = None,
    ) -> None:
        self.tenant = tenant
        self._rows = rows
        self._table = table

    @property
    def rows(self) -> tuple[Observation, ...]:
        if self._rows is None:
            self._rows = tuple(readings_rows(self._table)) if self._table is not None else ()
        return self._rows

    def __repr__(self) -> str:
        return f"ObservationsAdded({self.tenant!r}, {len(self.rows)} rows)"


Handler = Callable[[Any], None]


class EventBus:
    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._lock = threading.Lock()

    def subscribe(self, handler: Handler) -> None:
        with self._lock:
            self._handlers.append(handler)

    def publish(self, event: Any) -> None:
        self.publish_all((event,))

    def publish_all(self, events: Sequence[Any]) -> None:
        """``publish`` each event, in order (a batch's events: one look at the handlers)."""
        handlers = list(self._handlers)
        for event in events:
            for handler in handlers:
                try:
                    handler(event)
                except Exception:  # a failing consumer must never break ingest
                    log.exception("event handler %r failed", handler)
