"""Subscription notifications: match entity changes, throttle, and POST them to endpoints.

The bus handler runs on the ingest thread and only enqueues (a bounded queue); one worker
thread matches changes against the in-memory subscription index, coalesces what arrives
inside a subscription's throttling window (the newest state of each entity wins, nothing is
dropped), and sends notifications with httpx.

Subscriptions are persisted through the ``Store`` as *records*: the validated subscription
with canonical attribute and type names (see ``api.ngsi_ld.subscriptions``)::

    {"id", "type": "Subscription", "entities"?: [{"type", "id"?, "idPattern"?}],
     "watchedAttributes"?: [...], "q"?: text, "qNames"?: {name in q: canonical name},
     "notification": {"attributes"?: [...], "format", "endpoint": {"uri", "accept"}},
     "throttling"?: seconds, "isActive": bool, "expiresAt"?: ISO, "jsonldContext"?: any,
     "createdAt", "modifiedAt", "stats"?: {...}}
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson

from civica.api.contexts import ContextResolver, context_url_for_output
from civica.api.services import Services
from civica.core.bus import EntityChanged, EventBus
from civica.core.entity import Entity, compact_entity, project, to_key_values
from civica.core.ldcontext import CORE, LdContext
from civica.core.problems import ALREADY_EXISTS, Problem, not_found
from civica.core.query import Query, parse_q
from civica.core.store import DEFAULT_TENANT, Store
from civica.core.timefmt import format_time, parse_time, utcnow

log = logging.getLogger(__name__)

CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"
_WAKE = object()  # put on the queue to make the worker look at its flags

RETRY_MAX_S = 60.0  # the longest wait between two tries of a failed notification


@dataclass(frozen=True)
class NotifierSettings:
    """Limits of the notification sender.

    Notification targets are chosen by API clients, so a subscription can make this server
    send requests into networks the client cannot reach (SSRF: internal admin pages, cloud
    metadata at 169.254.169.254). In production an operator should restrict targets with
    ``allowed_hosts`` (``CIVICA_NOTIFY_ALLOWED_HOSTS=hooks.example.org,.city.example``; a
    leading dot allows sub-domains) or at the network egress.
    """

    timeout: float = 5.0
    queue_size: int = 10_000
    allowed_hosts: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls) -> NotifierSettings:
        raw = os.environ.get("CIVICA_NOTIFY_ALLOWED_HOSTS")
        if raw is None:
            return cls()
        return cls(allowed_hosts=tuple(h.strip().lower() for h in raw.split(",") if h.strip()))

    def allows(self, uri: str) -> bool:
        if self.allowed_hosts is None:
            return True
        host = httpx.URL(uri).host.lower()
        return any(
            host == h or (h.startswith(".") and (host.endswith(h) or host == h[1:]))
            for h in self.allowed_hosts
        )


@dataclass(frozen=True)
class Selector:
    type: str
    id: str | None = None
    id_pattern: re.Pattern[str] | None = None

    def matches(self, entity: Entity) -> bool:
        if entity.get("type") != self.type:
            return False
        if self.id is not None:
            return bool(entity["id"] == self.id)
        return self.id_pattern is None or self.id_pattern.fullmatch(entity["id"]) is not None


@dataclass(frozen=True)
class Subscription:
    """A record compiled for matching: regexes compiled, q parsed, times parsed."""

    id: str
    selectors: tuple[Selector, ...]
    watched: frozenset[str] | None
    q: Query | None
    attributes: tuple[str, ...] | None
    format: str
    uri: str
    accept: str
    throttling: float
    active: bool
    expires_at: datetime | None
    context: Any

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Subscription:
        q = None
        if record.get("q"):
            names: dict[str, str] = record.get("qNames") or {}
            q = parse_q(record["q"]).rename(lambda n: names.get(n, n))
        note = record["notification"]
        expires = record.get("expiresAt")
        return cls(
            id=record["id"],
            selectors=tuple(
                Selector(
                    s["type"],
                    s.get("id"),
                    re.compile(s["idPattern"]) if s.get("idPattern") else None,
                )
                for s in record.get("entities") or ()
            ),
            watched=frozenset(record["watchedAttributes"])
            if record.get("watchedAttributes")
            else None,
            q=q,
            attributes=tuple(note["attributes"]) if note.get("attributes") else None,
            format=note.get("format", "normalized"),
            uri=note["endpoint"]["uri"],
            accept=note["endpoint"].get("accept", "application/json"),
            throttling=float(record.get("throttling") or 0),
            active=bool(record.get("isActive", True)),
            expires_at=parse_time(expires, "expiresAt") if expires else None,
            context=record.get("jsonldContext"),
        )

    def live(self, now: datetime) -> bool:
        return self.active and (self.expires_at is None or now < self.expires_at)

    def matches(self, event: EntityChanged, now: datetime) -> bool:
        if event.deleted or not self.live(now):
            return False
        entity = event.entity
        if self.selectors and not any(s.matches(entity) for s in self.selectors):
            return False
        if self.watched is not None and not (self.watched & event.changed):
            return False
        return self.q is None or self.q.matches(entity)


@dataclass
class Stats:
    times_sent: int = 0
    last_notification: datetime | None = None
    last_success: datetime | None = None
    last_failure: datetime | None = None
    failed: bool = False

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"timesSent": self.times_sent}
        for key, value in (
            ("lastNotification", self.last_notification),
            ("lastSuccess", self.last_success),
            ("lastFailure", self.last_failure),
        ):
            if value is not None:
                out[key] = format_time(value)
        if self.times_sent:
            out["status"] = "failed" if self.failed else "ok"
        return out

    @classmethod
    def from_record(cls, raw: dict[str, Any] | None) -> Stats:
        raw = raw or {}

        def at(key: str) -> datetime | None:
            return parse_time(raw[key], key) if raw.get(key) else None

        return cls(
            int(raw.get("timesSent", 0)),
            at("lastNotification"),
            at("lastSuccess"),
            at("lastFailure"),
            raw.get("status") == "failed",
        )


@dataclass
class _Live:
    """A subscription in the index, with what is waiting to be sent."""

    tenant: str
    record: dict[str, Any]
    sub: Subscription
    stats: Stats
    pending: dict[str, Entity] = field(default_factory=dict)
    last_sent: float | None = None  # time.monotonic() of the last send
    failures: int = 0  # deliveries failed in a row; the next try waits 1, 2, 4 ... 60 s


class Notifier:
    """The subscription index and the notification sender of one process."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        resolver: ContextResolver,
        settings: NotifierSettings | None = None,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.settings = settings or NotifierSettings()
        self._lock = threading.RLock()
        self._index: dict[str, dict[str, _Live]] = {}
        self._due: dict[tuple[str, str], float] = {}  # subscriptions with pending changes
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.settings.queue_size)
        self._thread: threading.Thread | None = None
        self._running = False
        self.dropped = 0
        for tenant, record in store.subscriptions():
            try:
                self._put(tenant, record, Stats.from_record(record.get("stats")))
            except (Problem, KeyError, TypeError, ValueError, re.error) as err:
                log.error("subscription %s/%s not loaded: %s", tenant, record.get("id"), err)
        bus.subscribe(self._on_event)

    # ---- the index (called from API threads) ---------------------------------------------
    def get(self, tenant: str, sub_id: str) -> tuple[dict[str, Any], Stats] | None:
        with self._lock:
            live = self._index.get(tenant, {}).get(sub_id)
            return (live.record, live.stats) if live else None

    def records(self, tenant: str) -> list[tuple[dict[str, Any], Stats]]:
        with self._lock:
            found = self._index.get(tenant, {})
            return [(found[k].record, found[k].stats) for k in sorted(found)]

    def add(self, tenant: str, record: dict[str, Any]) -> None:
        """Persist and index a new subscription; AlreadyExists if the id is taken."""
        with self._lock:
            if record["id"] in self._index.get(tenant, {}):
                raise Problem(ALREADY_EXISTS, f"subscription {record['id']} exists")
            Subscription.from_record(record)
            self.store.put_subscription(tenant, record["id"], record)
            self._put(tenant, record, Stats())

    def update(
        self, tenant: str, sub_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> None:
        """Replace a subscription's record with ``change(record)``, persisted."""
        with self._lock:
            live = self._index.get(tenant, {}).get(sub_id)
            if live is None:
                raise not_found(f"subscription {sub_id} does not exist")
            record = change(live.record)
            sub = Subscription.from_record(record)
            self.store.put_subscription(tenant, sub_id, {**record, "stats": live.stats.to_record()})
            live.record, live.sub = record, sub

    def remove(self, tenant: str, sub_id: str) -> bool:
        with self._lock:
            live = self._index.get(tenant, {}).pop(sub_id, None)
            if live is None:
                return False
            if not self._index[tenant]:
                del self._index[tenant]
            self._due.pop((tenant, sub_id), None)
            self.store.delete_subscription(tenant, sub_id)
            return True

    def _put(self, tenant: str, record: dict[str, Any], stats: Stats) -> None:
        sub = Subscription.from_record(record)
        self._index.setdefault(tenant, {})[sub.id] = _Live(tenant, record, sub, stats)

    # ---- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._running = True
            self._thread = threading.Thread(target=self._run, name="civica-notifier", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the worker (changes still waiting are dropped) and keep the counters."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._running = False
        if thread is None:
            return
        # A full queue means the worker is busy; it sees the flag on its next item.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)
        thread.join(timeout=self.settings.timeout + 5)
        if thread.is_alive():
            log.error("the notifier did not stop within %.0f s", self.settings.timeout + 5)
        self._save_stats()

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        """A FastAPI lifespan: run the worker while the app serves."""
        import asyncio

        self.start()
        try:
            yield
        finally:
            await asyncio.to_thread(self.stop)

    def _save_stats(self) -> None:
        with self._lock:
            lives = [live for subs in self._index.values() for live in subs.values()]
        for live in lives:
            if live.stats.times_sent == 0:
                continue
            try:
                record = {**live.record, "stats": live.stats.to_record()}
                self.store.put_subscription(live.tenant, live.sub.id, record)
            except Exception:  # the store may be closing; counters are not worth a crash
                log.exception("could not save counters of subscription %s", live.sub.id)

    # ---- the ingest side: enqueue only -----------------------------------------------------
    def _on_event(self, event: object) -> None:
        if not self._running or not isinstance(event, EntityChanged) or event.deleted:
            return
        if event.tenant not in self._index:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("notification queue full: %d changes dropped so far", self.dropped)

    # ---- the worker ------------------------------------------------------------------------
    def _run(self) -> None:
        with httpx.Client(timeout=self.settings.timeout, follow_redirects=False) as client:
            while self._running:
                try:
                    item = self._queue.get(timeout=self._wait())
                except queue.Empty:
                    item = None
                try:
                    if isinstance(item, EntityChanged):
                        self._route(item)
                    self._send_due(client)
                except Exception:  # one bad subscription must not stop the others
                    log.exception("notifier step failed")

    def _wait(self) -> float:
        with self._lock:
            if not self._due:
                return 1.0
            return max(0.0, min(1.0, min(self._due.values()) - time.monotonic()))

    def _route(self, event: EntityChanged) -> None:
        now, tick = utcnow(), time.monotonic()
        with self._lock:
            for live in self._index.get(event.tenant, {}).values():
                if not live.sub.matches(event, now):
                    continue
                live.pending[event.entity["id"]] = event.entity
                key = (live.tenant, live.sub.id)
                if key not in self._due:
                    ready = tick
                    if live.last_sent is not None and live.sub.throttling > 0:
                        ready = max(tick, live.last_sent + live.sub.throttling)
                    self._due[key] = ready

    def _send_due(self, client: httpx.Client) -> None:
        tick = time.monotonic()
        batch: list[tuple[_Live, list[Entity]]] = []
        with self._lock:
            for key, ready in list(self._due.items()):
                if ready > tick:
                    continue
                del self._due[key]
                live = self._index.get(key[0], {}).get(key[1])
                if live is None or not live.pending:
                    continue
                entities, live.pending = list(live.pending.values()), {}
                live.last_sent = tick
                batch.append((live, entities))
        for live, entities in batch:
            if not live.sub.live(utcnow()):
                continue
            delivered = self._send(client, live, entities)
            with self._lock:
                if delivered is not False:
                    live.failures = 0
                    continue
                # The endpoint is down or busy: keep the changes (newer ones win) and try
                # again later, backing off, for as long as the subscription lives.
                for entity in entities:
                    live.pending.setdefault(entity["id"], entity)
                live.failures += 1
                delay = min(RETRY_MAX_S, 2.0 ** (live.failures - 1))
                self._due[(live.tenant, live.sub.id)] = time.monotonic() + delay

    def _send(self, client: httpx.Client, live: _Live, entities: list[Entity]) -> bool | None:
        """POST one notification: True if delivered, False if worth trying again (no
        answer, 408, 429, 5xx), None if not (the endpoint refused it, or is not allowed)."""
        sub = live.sub
        ctx = self._context(sub)
        data = []
        for entity in entities:
            shown = compact_entity(project(entity, sub.attributes), ctx)
            data.append(to_key_values(shown) if sub.format == "keyValues" else shown)
        sent_at = utcnow()
        body: dict[str, Any] = {
            "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
            "type": "Notification",
            "subscriptionId": sub.id,
            "notifiedAt": format_time(sent_at),
            "data": data,
        }
        headers = {"Content-Type": sub.accept}
        if sub.accept == "application/ld+json":
            body["@context"] = context_url_for_output(sub.context)
        elif isinstance(sub.context, str):
            headers["Link"] = f'<{sub.context}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
        if live.tenant != DEFAULT_TENANT:
            headers["NGSILD-Tenant"] = live.tenant
        ok = False
        retry: bool | None = None
        if not self.settings.allows(sub.uri):
            log.warning("subscription %s: endpoint %s is not allowed", sub.id, sub.uri)
        else:
            try:
                resp = client.post(sub.uri, content=orjson.dumps(body), headers=headers)
                ok = resp.is_success
                if not ok:
                    code = resp.status_code
                    retry = code in (408, 429) or code >= 500 or None
                    log.warning("subscription %s: %s answered %d", sub.id, sub.uri, code)
            except httpx.HTTPError as err:
                retry = True
                log.warning("subscription %s: POST %s failed: %s", sub.id, sub.uri, err)
        with self._lock:
            stats = live.stats
            stats.times_sent += 1
            stats.last_notification = sent_at
            stats.failed = not ok
            if ok:
                stats.last_success = sent_at
            else:
                stats.last_failure = sent_at
        if ok:
            return True
        return False if retry else None

    def _context(self, sub: Subscription) -> LdContext:
        if sub.context is None:
            return CORE
        try:
            return self.resolver.resolve(sub.context)
        except Problem as err:
            log.warning("subscription %s: @context unavailable (%s); core names", sub.id, err)
            return CORE


_CREATE_LOCK = threading.Lock()


def notifier_for(svc: Services) -> Notifier:
    """The notifier of these services, made on first use and kept in ``svc.extras``."""
    with _CREATE_LOCK:
        found = svc.extras.get("notifier")
        if not isinstance(found, Notifier):
            settings = svc.extras.get("notifier_settings")
            found = Notifier(
                svc.store,
                svc.ingest.bus,
                svc.resolver,
                settings if isinstance(settings, NotifierSettings) else NotifierSettings.from_env(),
            )
            svc.extras["notifier"] = found
        return found
