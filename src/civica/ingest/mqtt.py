"""MQTT ingest: readings on ``civica/<tenant>/<EntityType>/<entity-id>`` go through ``Ingest``.

A payload is JSON: one entity (NGSI-LD normalized or keyValues) or a list of them. A single
entity may leave out ``id`` and ``type``, which the topic supplies; list items may leave out
``type``. Whatever cannot be stored becomes a dead letter (source ``"mqtt"``) with the reason,
the topic and the raw payload, so nothing is dropped silently.

Two processes share the work (three with admission workers). The *receiver*, a child process,
holds the MQTT connection (``civica.ingest.mqtt_wire``, a lean MQTT v5 subscriber: paho-mqtt
spent about 70 us of Python per message there and capped ingest at one core; this takes a
few): it buffers the PUBLISH packets it reads and ships the buffer to the consumer every
``linger`` seconds or ``batch_size`` messages, and writes the consumer's acknowledgements as
one write per batch. The *consumer*, a thread of this process, groups a batch by tenant,
admits it and merges it (``Ingest.begin_upsert``), then hands it to its *writer* thread, which
writes it - one store transaction per tenant - while the consumer goes on with the next batch
(DuckDB lets go of the GIL while it writes). Batches are written in the order they came; when
a write fails, what was merged after it is abandoned and both are stored again, in order.
Plain readings (keyValues numbers) are admitted in the consumer by the gate's fast path; other
documents go to the admission workers when the ``Ingest`` has them (``civica serve`` starts
them), as HTTP batches do, and the next batch goes to them while this one is stored.

Delivery is at-least-once: messages are acknowledged (``manual_ack``) only after their batch is
committed or dead-lettered, so a crash before that leaves them with the broker. The receiver
asks for a large MQTT v5 Receive Maximum, because the broker stops sending once that many
messages are unacknowledged; with Mosquitto's default of 20 a batch could never fill. The same
window bounds the buffers, which is the only back-pressure the broker offers. Mosquitto still
drops messages for a subscriber that falls behind by more than the window plus its
``max_queued_messages`` (default 1000): size that setting for the bursts a city sends.

Scaling out: consumers that share ``$share/<group>/...`` split the stream between them. With
the default clean session a message that was in flight when a consumer died is lost at the
broker; give a ``client_id`` and a ``session_expiry`` to resume the session and have it
redelivered (then it may be stored twice, which is what at-least-once means). A lost
connection ends the receiver; the consumer starts another (backing off from 1 s to 30 s),
which connects afresh.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from civica.core.ldcontext import CORE, LdContext
from civica.core.problems import (
    INTERNAL_ERROR,
    PAYLOAD_TOO_LARGE,
    WRITE_NOT_STORED,
    Problem,
    bad_request,
)
from civica.core.store import DeadLetter
from civica.ingest import mqtt_wire as wire
from civica.ingest.admission import admit_all
from civica.ingest.pipeline import BatchOutcome, BegunUpsert, Ingest

log = logging.getLogger(__name__)

SOURCE = "mqtt"
MAX_PAYLOAD = 1024 * 1024
DEAD_LETTER_PAYLOAD = 64 * 1024
# The same rule as the HTTP API's NGSILD-Tenant header (the layers may not import each other).
_TENANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Connection numbers of the n-th receiver process start at n * this, so an ack meant for a
# dead receiver's connection never matches a live one.
_CONNECTIONS_PER_RECEIVER = 1_000_000
_TOPIC_CACHE = 200_000  # parsed topics kept (one per sensor); emptied when full
_RECV_BYTES = 256 * 1024  # one socket read: a few thousand small messages
_POLL_S = 0.02  # how long the receiver's network thread waits for bytes before it writes

# (topic, payload, payload size, message id, QoS, connection number), as received. A payload
# over the limit travels cut to what a dead letter keeps.
_Message = tuple[str, bytes, int, int, int, int]


@dataclass(frozen=True)
class MqttStats:
    """Counters since start: messages in, their fate, and store trouble."""

    received: int  # messages that reached the consumer
    accepted: int  # every entity in the message was stored
    dead_lettered: int  # at least one dead letter came from the message
    dead_letters: int  # dead-letter records written
    entities: int  # entities stored
    batches: int
    store_failures: int  # upsert calls that raised (and were retried)
    receiver_restarts: int
    pending: int  # received, not yet settled


@dataclass(frozen=True)
class _ReceiverConfig:
    """What the receiver process needs (it is pickled across)."""

    host: str
    port: int
    tls: bool
    cafile: str | None
    username: str | None
    password: str | None
    subscription: str
    client_id: str | None
    session_expiry: int
    receive_maximum: int
    keepalive: int
    manual_ack: bool
    batch_size: int
    linger: float
    max_payload: int
    first_connection: int


class MqttIngest:
    """Consumes entity messages from an MQTT broker into ``Ingest``, in batches."""

    def __init__(
        self,
        ingest: Ingest,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        topic_root: str = "civica",
        group: str | None = "civica",
        ctx: LdContext = CORE,
        client_id: str | None = None,
        session_expiry: int = 0,
        batch_size: int = 2000,
        linger: float = 0.05,
        max_payload: int = MAX_PAYLOAD,
        manual_ack: bool = True,
        receive_maximum: int = 65535,
        keepalive: int = 60,
        retries: int = 3,
        retry_delay: float = 0.2,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"not an MQTT broker URL (mqtt://host:port): {url!r}")
        if session_expiry and not client_id:
            raise ValueError("a session that outlives the connection needs a client_id")
        self.ingest = ingest
        self.host = parts.hostname
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.tls = parts.scheme == "mqtts"
        # mqtts://...?cafile=/etc/civica/broker-ca.pem trusts a city's own CA (else the
        # system's CAs, or SSL_CERT_FILE).
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"cafile"})
        if unknown:
            raise ValueError(f"unknown MQTT URL parameter(s): {', '.join(unknown)} (known: cafile)")
        self.cafile = query["cafile"][-1] if "cafile" in query else None
        if self.cafile is not None and not self.tls:
            raise ValueError("cafile= applies to mqtts:// URLs only")
        if self.cafile is not None and not Path(self.cafile).is_file():
            raise ValueError(f"the MQTT CA file {self.cafile!r} does not exist")
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.topic_root = topic_root.strip("/")
        filter_ = f"{self.topic_root}/+/+/+"
        self.subscription = f"$share/{group}/{filter_}" if group else filter_
        self.ctx = ctx
        self.client_id = client_id
        self.session_expiry = session_expiry
        self.batch_size = batch_size
        self.linger = linger
        self.max_payload = max_payload
        self.manual_ack = manual_ack
        self.receive_maximum = receive_maximum
        self.keepalive = keepalive
        self.retries = retries
        self.retry_delay = retry_delay

        self._lock = threading.Lock()
        self._pending: list[_Message] = []
        self._ahead: tuple[list[_Message], _Prepared] | None = None
        self._topics: dict[str, tuple[str, str, str]] = {}  # valid topics, parsed
        self._stopping = threading.Event()
        self._send_lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._inbox: Connection | None = None  # from the receiver
        self._outbox: Connection | None = None  # to the receiver
        self._receivers = 0
        self._last_restart = -1e9
        self._restart_delay = 1.0
        self._worker: threading.Thread | None = None
        names = [f.name for f in fields(MqttStats) if f.name != "pending"]
        self._counts = dict.fromkeys(names, 0)

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Start the receiver and the consumer; return once the broker granted the subscription."""
        if self._worker is not None:
            raise RuntimeError("this consumer is already running")
        self._stopping.clear()
        self._spawn()
        try:
            self._await_ready(timeout)
        except BaseException:
            self._reap(0)
            raise
        self._worker = threading.Thread(target=self._run, name="civica-mqtt-ingest", daemon=True)
        self._worker.start()
        log.info("consuming %s from %s:%d", self.subscription, self.host, self.port)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking messages, store and acknowledge what was received, end both processes."""
        worker = self._worker
        if worker is None:
            return
        self._stopping.set()
        self._tell(("stop", None))
        worker.join(timeout)
        if worker.is_alive():
            log.error("the MQTT consumer did not finish within %s s", timeout)
        self._reap(10.0)
        self._worker = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stats(self) -> MqttStats:
        """A snapshot of the counters."""
        with self._lock:
            return MqttStats(**self._counts, pending=len(self._pending))

    # ---- the receiver process ----------------------------------------------------------------
    def _spawn(self) -> None:
        config = _ReceiverConfig(
            host=self.host,
            port=self.port,
            tls=self.tls,
            cafile=self.cafile,
            username=self.username,
            password=self.password,
            subscription=self.subscription,
            client_id=self.client_id,
            session_expiry=self.session_expiry,
            receive_maximum=self.receive_maximum,
            keepalive=self.keepalive,
            manual_ack=self.manual_ack,
            batch_size=self.batch_size,
            linger=self.linger,
            max_payload=self.max_payload,
            first_connection=(self._receivers + 1) * _CONNECTIONS_PER_RECEIVER,
        )
        self._receivers += 1
        # A fresh interpreter, not a fork: this process has threads (DuckDB, servers) that a
        # fork would copy mid-step; and not multiprocessing's spawn, which re-runs the main
        # script of whatever program embeds us.
        inbox, child_out = multiprocessing.Pipe(duplex=False)
        child_in, outbox = multiprocessing.Pipe(duplex=False)
        fds = (child_out.fileno(), child_in.fileno())
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, *map(str, fds)],
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        child_out.close()
        child_in.close()
        # The settings travel through the pipe, not the command line, which others can read.
        outbox.send(asdict(config))
        self._process, self._inbox, self._outbox = process, inbox, outbox

    def _await_ready(self, timeout: float) -> None:
        assert self._inbox is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._inbox.poll(left):
                raise TimeoutError(
                    f"no MQTT subscription on {self.host}:{self.port} in {timeout} s"
                )
            try:
                kind, body = self._inbox.recv()
            except EOFError:
                raise ConnectionError("the MQTT receiver process ended at start") from None
            if kind == "ready":
                return
            if kind == "batch":  # not sent before "ready", but never dropped either
                with self._lock:
                    self._pending.extend(body)
                    self._counts["received"] += len(body)
            if kind == "error":
                raise ConnectionError(str(body))
            if kind == "log":
                log.log(*body)

    def _tell(self, message: tuple[str, Any]) -> None:
        with self._send_lock:
            if self._outbox is None:
                return
            # A receiver that is gone has nothing left to be told.
            with contextlib.suppress(OSError, ValueError):
                self._outbox.send(message)

    def _reap(self, timeout: float) -> None:
        """Wait for the receiver to end (kill it after ``timeout``) and close the pipes."""
        process = self._process
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with self._send_lock:
            for conn in (self._inbox, self._outbox):
                if conn is not None:
                    conn.close()
            self._process = self._inbox = self._outbox = None

    def _respawn(self) -> None:
        """Replace a receiver that died; what it had shipped is still stored, not acked."""
        self._reap(0)
        with self._lock:
            self._counts["receiver_restarts"] += 1
        # Back off while restarts come in quick succession, start afresh after a quiet spell.
        now = time.monotonic()
        quick = now - self._last_restart < 60
        self._restart_delay = min(30.0, self._restart_delay * 2) if quick else 1.0
        self._last_restart = now
        log.error("the MQTT receiver ended; starting another in %.0f s", self._restart_delay)
        if self._stopping.wait(self._restart_delay):
            return
        try:
            self._spawn()
        except Exception:  # the next pull finds no receiver and lands here again
            log.exception("could not start the MQTT receiver")

    # ---- the consumer thread -----------------------------------------------------------------
    @property
    def _offloading(self) -> bool:
        """Whether batches go to the admission workers (the core context only, as HTTP)."""
        return self.ingest.admission is not None and self.ctx is CORE

    def _prepared_ahead(self, batch: list[_Message]) -> _Prepared | None:
        """The preparation made for ``batch`` while the previous one was stored, if any."""
        made, self._ahead = self._ahead, None
        if made is None:
            return None
        messages, prepared = made
        same = len(messages) == len(batch) and messages[0] is batch[0]
        return prepared if same and messages[-1] is batch[-1] else None

    def _run(self) -> None:
        finished = False  # the receiver shipped its last batch
        stuck = 0
        # The batch merged last, being written by the writer thread while the next one is
        # unpacked and merged here (the database lets go of the GIL while it writes).
        flight: _Flight | None = None
        writer = ThreadPoolExecutor(1, thread_name_prefix="civica-mqtt-write")
        try:
            while True:
                if not finished:
                    skip = len(flight.batch) if flight is not None else 0
                    busy = flight is not None or len(self._pending) > skip
                    try:
                        finished = self._pull(0.0 if busy else 0.2, skip)
                    except Exception as err:  # EOF or a broken pipe: the receiver is gone
                        if self._stopping.is_set():
                            finished = True
                        else:
                            if not isinstance(err, EOFError | OSError):
                                log.exception("reading from the MQTT receiver failed")
                            self._respawn()
                            continue
                batch, following = self._next_batch(flight)
                if not batch and flight is None:
                    if finished:
                        break
                    continue
                merged: _Flight | None = None
                failed = False
                if batch:
                    try:
                        prepared = self._prepared_ahead(batch)
                        if following and self._offloading:
                            # The admission workers parse the batch after this one meanwhile.
                            self._ahead = (following, self._prepare(following))
                        merged = self._begin(batch, prepared)
                    except Exception:  # a bug here must not end consumption: keep the messages
                        log.exception("an MQTT batch failed; it is retried")
                        failed = True
                left: list[_Message] = []
                landed = 0
                if flight is not None:
                    flight.done.wait()
                    if merged is not None and flight.store_again:
                        # It was merged on states that were not written: refuse its write,
                        # and store it again after the batch before it.
                        merged.abandon()
                    left, landed, flight = self._land_safely(flight), len(flight.batch), None
                if merged is not None and (left or merged.done.is_set()):
                    merged.write()  # here, in order, behind messages that come back
                    left += self._land_safely(merged)
                    landed += len(merged.batch)
                    merged = None
                # What the store refused even as dead letters stays, unacknowledged, at the
                # front for another try: it is never acknowledged without having been kept.
                if landed:
                    with self._lock:
                        self._pending[:landed] = left
                if merged is not None:
                    flight = merged
                    writer.submit(merged.write)
                    continue
                if not left and not failed:
                    stuck = 0
                    continue
                stuck += 1
                if (finished or self._stopping.is_set()) and stuck > self.retries:
                    log.error(
                        "stopping with %d MQTT messages neither stored nor dead-lettered; "
                        "they stay unacknowledged at the broker",
                        len(self._pending),
                    )
                    break
                self._stopping.wait(self.retry_delay * min(2**stuck, 50))
        finally:
            if flight is not None:  # only after a bug: let the write end before closing
                flight.done.wait()
            writer.shutdown(wait=True)
        self._tell(("close", None))

    def _next_batch(self, flight: _Flight | None) -> tuple[list[_Message], list[_Message]]:
        """The next batch after the one in flight, and the batch after that."""
        with self._lock:
            pending, size = self._pending, self.batch_size
            skip = len(flight.batch) if flight is not None else 0
            ahead = self._ahead
            if ahead is not None and len(pending) > skip and pending[skip] is ahead[0][0]:
                size = len(ahead[0])  # exactly the batch prepared ahead
            batch = pending[skip : skip + size]
            after = skip + len(batch)
            return batch, pending[after : after + self.batch_size]

    def _pull(self, timeout: float, skip: int = 0) -> bool:
        """Take what the receiver shipped into the pending list; True once it has finished.

        ``skip`` messages at the front are in flight already.
        """
        inbox = self._inbox
        if inbox is None:
            raise EOFError
        # Two batches' worth when the next one is prepared while this one is stored.
        wanted = skip + self.batch_size * (2 if self._offloading else 1)
        while len(self._pending) < wanted and inbox.poll(timeout):
            timeout = 0.0
            kind, body = inbox.recv()
            if kind == "batch":
                with self._lock:
                    self._pending.extend(body)
                    self._counts["received"] += len(body)
            elif kind == "finished":
                return True
            elif kind == "log":
                log.log(*body)
            elif kind == "error":
                log.error("MQTT receiver: %s", body)
                raise EOFError
        return False

    def _prepare(self, batch: list[_Message]) -> _Prepared:
        """Unpack a batch by tenant and, with admission workers, start admitting it there."""
        now = self.ingest.clock.now()
        letters: list[DeadLetter] = []
        refused = [False] * len(batch)
        groups: dict[str, tuple[list[Any], list[tuple[int, int | None]]]] = {}
        for index, (topic, payload, size, _mid, _qos, _conn) in enumerate(batch):
            try:
                tenant, docs = self._unpack(topic, payload, size)
            except _RefusedError as err:
                letters.append(_letter(now, err.tenant, err.problem.detail, payload, topic))
                refused[index] = True
                continue
            # Each document remembers its message and, for a list, its position in it.
            group = groups.get(tenant)
            if group is None:
                group = groups[tenant] = ([], [])
            group_docs, owners = group
            if isinstance(docs, list):
                group_docs.extend(docs)
                owners.extend((index, item) for item in range(len(docs)))
            else:
                group_docs.append(docs)
                owners.append((index, None))
        admitted: dict[str, _Admitted] = {}
        pool = self.ingest.admission
        if pool is None or not self._offloading:
            # Admitted in ``_begin`` by ``admit_all``, whose every document tries the gate's
            # fast path first.
            return _Prepared(now, letters, refused, groups, admitted)
        for tenant, (docs, _owners) in groups.items():
            plain = self._admit_plain(docs)
            if plain is not None:
                # Plain readings are admitted here faster than the trip to a worker and back
                # costs (28 k against 25 k messages/s, with less CPU).
                admitted[tenant] = _given(plain)
                continue
            try:
                admitted[tenant] = pool.submit_body(orjson.dumps(docs), None, len(docs))
            except Exception:  # no workers (shut down, broken): admitted here instead
                log.exception("MQTT batch admission could not start in the workers")
        return _Prepared(now, letters, refused, groups, admitted)

    def _admit_plain(self, docs: Sequence[Any]) -> list[Any] | None:
        """The documents admitted by the gate's fast path, if every one is a plain reading
        (keyValues numbers, core context); else None, and the full path admits them."""
        if self.ctx is not CORE:
            return None
        admit = self.ingest.gate.admit_readings
        out = []
        try:
            for doc in docs:
                entity = admit(doc) if type(doc) is dict else None
                if entity is None:
                    return None
                out.append(entity)
        except Exception:  # the full path will say what is wrong
            return None
        return out

    def _begin(self, batch: list[_Message], prepared: _Prepared | None = None) -> _Flight:
        """Admit a batch (or take what the workers admitted) and merge it, one part a tenant.

        Store errors do not raise here: they come out of ``_Flight.write``.
        """
        if prepared is None:
            prepared = self._prepare(batch)
        parts: list[_Part] = []
        try:
            for tenant, (docs, owners) in prepared.groups.items():
                admitted = prepared.admitted.get(tenant)
                answer = None
                if admitted is not None:
                    try:
                        answer = admitted()
                    except Exception:  # the workers failed (not the documents): admitted here
                        log.exception("MQTT batch admission failed in the workers")
                if answer is None:
                    entities, errors = admit_all(self.ingest.gate, docs, self.ctx, None)
                    readings = None
                else:
                    entities, errors, readings = answer
                begun = self.ingest.begin_upsert(tenant, entities, readings=readings)
                parts.append(_Part(tenant, docs, owners, list(errors), begun))
        except BaseException:
            # The whole batch is tried again later: what was merged of it is never written.
            for part in parts:
                with contextlib.suppress(Exception):
                    part.begun.abandon()
            raise
        return _Flight(batch, prepared, parts)

    def _land_safely(self, flight: _Flight) -> list[_Message]:
        try:
            return self._land(flight)
        except Exception:  # a bug here must not end consumption: keep the messages
            log.exception("an MQTT batch failed; it is retried")
            return flight.batch

    def _land(self, flight: _Flight) -> list[_Message]:
        """After its write: store again what failed, dead-letter what was refused, ack what
        is settled; return the messages that are not."""
        batch, prepared = flight.batch, flight.prepared
        now, letters, refused = prepared.now, prepared.letters, prepared.refused
        entities = 0
        for part in flight.parts:
            tenant, docs, owners = part.tenant, part.docs, part.owners
            if part.outcome is not None:
                outcome = part.outcome
                outcome.errors[:0] = part.errors
                failures = self._attribute(tenant, docs, outcome) if outcome.errors else {}
            else:
                failure = part.failure
                if isinstance(failure, Problem) and failure.kind is WRITE_NOT_STORED:
                    # Refused because a batch before it failed (and is stored again first).
                    log.warning("MQTT batch of %d entities stored again: %s", len(docs), failure)
                elif failure is not None:
                    self._store_failed(len(docs), failure)
                try:
                    failures = self._store(tenant, docs)
                except Exception:
                    failures = self._store_one_by_one(tenant, docs, owners)
            for doc_index, problem in failures.items():
                index, item = owners[doc_index]
                topic, payload = batch[index][0], batch[index][1]
                if item is None:
                    letters.append(_letter(now, tenant, problem.detail, payload, topic))
                else:
                    reason = f"item {item}: {problem.detail}"
                    raw = orjson.dumps(docs[doc_index])
                    letters.append(_letter(now, tenant, reason, raw, topic))
                refused[index] = True
            entities += len(docs) - len(failures)

        unsettled: set[int] = set()
        if letters:
            try:
                self.ingest.store.add_dead_letters(letters)
            except Exception:
                log.exception("could not write %d MQTT dead letters", len(letters))
                unsettled = {i for i, bad in enumerate(refused) if bad}
                letters = []
        self._ack([m for i, m in enumerate(batch) if i not in unsettled])
        bad = sum(1 for i, b in enumerate(refused) if b and i not in unsettled)
        with self._lock:
            counts = self._counts
            counts["batches"] += 1
            counts["accepted"] += len(batch) - len(unsettled) - bad
            counts["dead_lettered"] += bad
            counts["dead_letters"] += len(letters)
            counts["entities"] += entities
        return [batch[i] for i in sorted(unsettled)]

    def _ack(self, settled: list[_Message]) -> None:
        if self.manual_ack:
            acks = [(mid, conn) for _t, _p, _s, mid, qos, conn in settled if qos]
            if acks:
                self._tell(("ack", acks))

    # ---- reading one message -----------------------------------------------------------------
    def _unpack(self, topic: str, payload: bytes, size: int) -> tuple[str, Any]:
        """The tenant and the document(s) of one message; raise ``_RefusedError`` for a bad one."""
        tenant, etype, eid = self._topic(topic)
        if size > self.max_payload:
            detail = f"payload too large: {size} bytes, the limit is {self.max_payload}"
            raise _RefusedError(tenant, Problem(PAYLOAD_TOO_LARGE, detail))
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            raise _RefusedError(tenant, bad_request(f"malformed JSON: {err}")) from None
        if isinstance(body, dict):
            try:
                return tenant, self._fill(body, etype, eid)
            except Problem as err:
                raise _RefusedError(tenant, err) from None
        if isinstance(body, list):
            for item in body:
                # A list names one type in its topic but many ids in its items.
                if isinstance(item, dict) and "type" not in item:
                    item["type"] = etype
            return tenant, body
        problem = bad_request("the payload must be a JSON object or a list of objects")
        raise _RefusedError(tenant, problem)

    def _topic(self, topic: str) -> tuple[str, str, str]:
        # Sensors publish on the same topic again and again: each is checked once.
        known = self._topics.get(topic)
        if known is not None:
            return known
        parsed = self._parse_topic(topic)
        if len(self._topics) >= _TOPIC_CACHE:
            self._topics.clear()
        self._topics[topic] = parsed
        return parsed

    def _parse_topic(self, topic: str) -> tuple[str, str, str]:
        root = self.topic_root
        parts = topic[len(root) + 1 :].split("/") if topic.startswith(root + "/") else []
        if len(parts) != 3 or not all(parts):
            problem = bad_request(f"topic {topic[:200]!r} is not {root}/<tenant>/<type>/<id>")
            raise _RefusedError("", problem)
        tenant, etype, eid = parts
        if not _TENANT_RE.match(tenant):
            problem = bad_request(
                f"tenant {tenant[:80]!r} in the topic is not [A-Za-z0-9_-]{{1,64}}"
            )
            raise _RefusedError("", problem)
        return tenant, etype, eid

    def _fill(self, doc: dict[str, Any], etype: str, eid: str) -> dict[str, Any]:
        """Take a missing id and type from the topic; refuse a payload that contradicts it."""
        if "id" not in doc:
            doc["id"] = eid
        elif doc["id"] != eid:
            raise bad_request(f"the payload id {str(doc['id'])[:80]!r} is not the topic's {eid!r}")
        kind = doc.get("type")
        if kind is None:
            doc["type"] = etype
        elif kind != etype and not self._same_type(kind, etype):
            raise bad_request(f"the payload type {str(kind)[:80]!r} is not the topic's {etype!r}")
        return doc

    def _same_type(self, kind: Any, etype: str) -> bool:
        if isinstance(kind, list) and len(kind) == 1:
            kind = kind[0]
        if not isinstance(kind, str):
            return False
        try:
            return self.ctx.to_canonical(kind) == self.ctx.to_canonical(etype)
        except Problem:
            return False

    # ---- storing -------------------------------------------------------------------------------
    def _store_failed(self, entities: int, err: BaseException, attempt: int = 1) -> None:
        with self._lock:
            self._counts["store_failures"] += 1
        log.error(
            "storing %d MQTT entities failed (attempt %d)",
            entities,
            attempt,
            exc_info=(type(err), err, err.__traceback__),
        )

    def _store(self, tenant: str, docs: Sequence[Any]) -> dict[int, Problem]:
        """Upsert one tenant's documents here, retrying store errors; the failed documents'
        problems. This is the path after a failed write: it raises if the store keeps failing.
        """
        for attempt in range(self.retries + 1):
            try:
                outcome = self.ingest.upsert(tenant, docs, self.ctx, key_values=None)
            except Exception as err:
                self._store_failed(len(docs), err, attempt + 2)
                if attempt < self.retries:
                    time.sleep(self.retry_delay * 2**attempt)
                continue
            return self._attribute(tenant, docs, outcome) if outcome.errors else {}
        raise RuntimeError("the store keeps failing")

    def _store_one_by_one(
        self, tenant: str, docs: Sequence[Any], owners: Sequence[tuple[int, int | None]]
    ) -> dict[int, Problem]:
        """After repeated failures, store message by message; the failed documents' problems.

        This finds a poison message among good ones. A message that still breaks the store is
        dead-lettered with the error rather than retried for ever; if the store is down, the
        dead letters fail too and the messages stay unacknowledged for a later try.
        """
        by_message: dict[int, list[int]] = {}
        for doc_index, (index, _item) in enumerate(owners):
            by_message.setdefault(index, []).append(doc_index)
        failures: dict[int, Problem] = {}
        for doc_indexes in by_message.values():
            some = [docs[i] for i in doc_indexes]
            try:
                outcome = self.ingest.upsert(tenant, some, self.ctx, key_values=None)
            except Exception as err:
                detail = f"could not be stored: {type(err).__name__}: {err}"
                failures.update((i, Problem(INTERNAL_ERROR, detail)) for i in doc_indexes)
                continue
            for local, problem in self._attribute(tenant, some, outcome).items():
                failures[doc_indexes[local]] = problem
        return failures

    def _attribute(
        self, tenant: str, docs: Sequence[Any], outcome: BatchOutcome
    ) -> dict[int, Problem]:
        """Which documents the outcome's errors belong to (errors name ids, not positions)."""
        by_id: dict[str | None, list[int]] = {}
        for i, doc in enumerate(docs):
            by_id.setdefault(_doc_id(doc), []).append(i)
        failures: dict[int, Problem] = {}
        for eid, problem in outcome.errors:
            candidates = [i for i in by_id.get(eid, []) if i not in failures]
            if len(candidates) == 1:
                failures[candidates[0]] = problem
                continue
            # Several documents share the id: check them again to learn which one failed.
            found = self._recheck(tenant, eid, [(i, docs[i]) for i in candidates], problem)
            if not found:
                log.error("MQTT ingest could not place error %r for %r", problem.detail, eid)
            failures.update(found)
        return failures

    def _recheck(
        self, tenant: str, eid: str | None, candidates: list[tuple[int, Any]], problem: Problem
    ) -> dict[int, Problem]:
        for i, doc in candidates:
            try:
                self.ingest.admit(doc, self.ctx, None)
            except Problem as err:
                return {i: err}
        # Every candidate passes the gate, so the error came from the stored state (a type
        # clash): the failed one is a document whose type the store did not take.
        stored = self.ingest.store.get_entities(tenant, [eid]).get(eid) if eid else None
        for i, doc in candidates:
            if stored is None or self.ingest.admit(doc, self.ctx, None)["type"] != stored.type:
                return {i: problem}
        return {}


_Admitted = Callable[[], tuple[list[Any], list[tuple[str | None, Problem]], Any]]


def _given(entities: list[Any]) -> _Admitted:
    """An admission answer already made: every document admitted, no readings table."""
    return lambda: (entities, [], None)


@dataclass
class _Part:
    """One tenant's documents of a batch on their way through ``Ingest``."""

    tenant: str
    docs: list[Any]
    owners: list[tuple[int, int | None]]  # (message, item of a list or None), per document
    errors: list[tuple[str | None, Problem]]  # refused at admission
    begun: BegunUpsert  # merged, to be written
    outcome: BatchOutcome | None = None  # written
    failure: BaseException | None = None  # not written: stored again, here, by ``_land``


@dataclass
class _Flight:
    """A batch merged and on its way to the store."""

    batch: list[_Message]
    prepared: _Prepared
    parts: list[_Part]
    done: threading.Event = field(default_factory=threading.Event)

    def write(self) -> None:
        """Write every part (any thread); what fails is kept in the part."""
        self._settle(BegunUpsert.finish)

    def abandon(self) -> None:
        """Refuse the writes: a batch merged before this one must be stored again first."""
        self._settle(BegunUpsert.abandon)

    def _settle(self, how: Callable[[BegunUpsert], BatchOutcome]) -> None:
        try:
            for part in self.parts:
                if part.outcome is None and part.failure is None:
                    try:
                        part.outcome = how(part.begun)
                    except Exception as err:
                        part.failure = err
        finally:
            self.done.set()

    @property
    def store_again(self) -> bool:
        """Whether some part was not written (what is merged after it must wait)."""
        return any(part.failure is not None for part in self.parts)


@dataclass
class _Prepared:
    """A batch unpacked by tenant, with what the admission workers are making of it."""

    now: Any
    letters: list[DeadLetter]
    refused: list[bool]
    groups: dict[str, tuple[list[Any], list[tuple[int, int | None]]]]
    admitted: dict[str, _Admitted]


class _RefusedError(Exception):
    """A whole message is refused before it reaches the pipeline."""

    def __init__(self, tenant: str, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.tenant = tenant
        self.problem = problem


def _doc_id(doc: Any) -> str | None:
    # The same key Ingest uses to name a document in its errors.
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        return str(doc["id"])[:256]
    return None


def _letter(now: Any, tenant: str, reason: str, payload: bytes, topic: str) -> DeadLetter:
    text = payload[:DEAD_LETTER_PAYLOAD].decode("utf-8", "replace")
    return DeadLetter(now, SOURCE, tenant, reason, text, topic)


# ---- the receiver process ------------------------------------------------------------------------
def _receive(argv: Sequence[str]) -> None:
    """The receiver process's entry point: ``python -m civica.ingest.mqtt OUT_FD IN_FD``."""
    outbox, inbox = (
        Connection(int(argv[0]), readable=False),
        Connection(int(argv[1]), writable=False),
    )
    try:
        config = _ReceiverConfig(**inbox.recv())
    except EOFError:
        return
    _Receiver(config, outbox, inbox).run()


class _Receiver:
    """Runs the MQTT connection in the receiver process: buffers messages, ships batches,
    sends acks in bulk (``civica.ingest.mqtt_wire``)."""

    def __init__(self, config: _ReceiverConfig, outbox: Connection, inbox: Connection) -> None:
        self.config = config
        self._outbox = outbox
        self._inbox = inbox
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._buffer: list[_Message] = []
        self._connection = config.first_connection + 1
        self._wake = threading.Event()
        self._unsubscribed = threading.Event()
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._lost: str | None = None  # why the connection ended, if it did
        self._out_lock = threading.Lock()
        self._out: list[bytes] = []  # packets for the network thread to write
        self._reader = wire.Reader()
        self._sock: socket.socket | None = None

    def _send(self, message: tuple[str, Any]) -> None:
        with self._send_lock:
            self._outbox.send(message)

    def _log(self, level: int, message: str) -> None:
        # This process has no logging set up; the consumer logs on its behalf (if still there).
        with contextlib.suppress(OSError):
            self._send(("log", (level, "MQTT receiver: %s", message)))

    def run(self) -> None:
        """Connect, subscribe and ship batches until the consumer says close."""
        config = self.config
        where = f"{config.host}:{config.port}"
        try:
            sock = wire.open_socket(
                config.host, config.port, config.tls, timeout=10.0, cafile=config.cafile
            )
        except OSError as err:
            self._send(("error", f"cannot reach the MQTT broker {where}: {err}"))
            return
        self._sock = sock
        try:
            refused = self._handshake(sock)
        except (OSError, wire.ProtocolError) as err:
            refused = f"the MQTT broker {where} dropped the connection while connecting: {err}"
        if refused:
            self._send(("error", refused))
            sock.close()
            return
        self._send(("ready", None))
        network = threading.Thread(target=self._network, name="civica-mqtt-net", daemon=True)
        network.start()
        threading.Thread(target=self._commands, name="civica-mqtt-acks", daemon=True).start()
        try:
            self._ship()
        except OSError:  # the consumer is gone; what it did not acknowledge stays at the broker
            pass
        finally:
            self._queue(wire.DISCONNECT_PACKET)
            self._closing.set()
            network.join(5.0)
            sock.close()

    def _handshake(self, sock: socket.socket) -> str | None:
        """CONNECT and SUBSCRIBE; None when subscribed, else why not."""
        config = self.config
        sock.sendall(
            wire.connect_packet(
                config.client_id or "",
                config.keepalive,
                clean_start=not config.session_expiry,
                session_expiry=config.session_expiry,
                receive_maximum=config.receive_maximum,
                username=config.username,
                password=config.password,
            )
        )
        subscribed = False
        while True:
            data = sock.recv(_RECV_BYTES)
            if not data:
                raise ConnectionError("closed by the broker")
            # A resumed session's messages may come before the SUBACK: they are kept.
            for kind, body in self._feed(data):
                if kind == wire.CONNACK:
                    code = wire.reason_of(kind, body)
                    if code >= 0x80:
                        return f"the MQTT broker refused the connection: {wire.reason_text(code)}"
                    if not subscribed:
                        sock.sendall(wire.subscribe_packet(1, config.subscription))
                        subscribed = True
                elif kind == wire.SUBACK:
                    _mid, codes = wire.suback_reasons(body)
                    failed = [c for c in codes if c >= 0x80]
                    if failed or not codes:
                        reason = wire.reason_text(failed[0]) if failed else "no reason code"
                        return f"subscription to {config.subscription} refused: {reason}"
                    return None
                elif kind == wire.DISCONNECT:
                    code = wire.reason_of(kind, body)
                    return f"the MQTT broker disconnected: {wire.reason_text(code)}"

    def _feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Decode received bytes: buffer the messages, return the other packets."""
        config = self.config
        limit = config.max_payload
        connection = self._connection
        got: list[_Message] = []
        auto: list[int] = []

        def on_publish(topic: str, payload: bytes, mid: int, qos: int) -> None:
            size = len(payload)
            if size > limit:
                payload = payload[:DEAD_LETTER_PAYLOAD]
            got.append((topic, payload, size, mid, qos, connection))
            if qos and not config.manual_ack:
                auto.append(mid)

        others = self._reader.feed(data, on_publish)
        if got:
            with self._lock:
                self._buffer.extend(got)
                full = len(self._buffer) >= config.batch_size
            if full:
                self._wake.set()
        if auto:
            self._queue(wire.pubacks(auto))
        return others

    def _queue(self, packet: bytes) -> None:
        with self._out_lock:
            self._out.append(packet)

    def _network(self) -> None:
        """Read and write the socket until closing or until the connection is lost."""
        sock = self._sock
        assert sock is not None
        sock.settimeout(_POLL_S)
        keepalive = self.config.keepalive
        last_sent = time.monotonic()
        try:
            while True:
                with self._out_lock:
                    out, self._out = self._out, []
                if out:
                    sock.sendall(b"".join(out))
                    last_sent = time.monotonic()
                if self._closing.is_set():
                    with self._out_lock:
                        if not self._out:
                            return
                    continue
                try:
                    data = sock.recv(_RECV_BYTES)
                except TimeoutError:
                    data = None
                if data == b"":
                    raise ConnectionError("closed by the broker")
                if data:
                    for kind, body in self._feed(data):
                        if kind == wire.UNSUBACK:
                            self._unsubscribed.set()
                        elif kind == wire.DISCONNECT:
                            code = wire.reason_of(kind, body)
                            raise ConnectionError(f"disconnected: {wire.reason_text(code)}")
                if keepalive and time.monotonic() - last_sent > keepalive / 2:
                    self._queue(wire.PINGREQ_PACKET)
        except (OSError, wire.ProtocolError) as err:
            if not self._closing.is_set():
                # This receiver ends; the consumer starts another (see MqttIngest._respawn).
                self._lost = f"connection to the MQTT broker lost ({err})"
                self._stopping.set()
                self._wake.set()

    def _ship(self) -> None:
        """Ship the buffer to the consumer in batches until told to stop."""
        while True:
            stopping = self._stopping.is_set()
            if not stopping:
                self._wake.wait(self.config.linger)
                self._wake.clear()
            with self._lock:
                batch, self._buffer = self._buffer, []
            if batch:
                self._send(("batch", batch))
            elif stopping:
                break
        if self._lost is not None:
            self._send(("error", self._lost))  # the consumer replaces this receiver
            return
        self._send(("finished", None))
        # The consumer's last acks arrive before its "close"; they go out before DISCONNECT.
        self._closing.wait()

    def _commands(self) -> None:
        """Carry out what the consumer says: acknowledge, stop, close."""
        try:
            while True:
                kind, body = self._inbox.recv()
                if kind == "ack":
                    current = self._connection
                    # An id from an earlier receiver's connection may now name another message;
                    # the broker redelivers (or has dropped) the old one.
                    mids = [mid for mid, conn in body if conn == current]
                    if mids:
                        self._queue(wire.pubacks(mids))
                elif kind == "stop":
                    # Unsubscribe first so the last batch is final: the broker sends nothing
                    # after its UNSUBACK, and what it sent before is already buffered.
                    if self._lost is None:
                        self._queue(wire.unsubscribe_packet(2, self.config.subscription))
                        self._unsubscribed.wait(5.0)
                    self._stopping.set()
                    self._wake.set()
                elif kind == "close":
                    break
        except (EOFError, OSError):  # the consumer is gone: close down too
            pass
        self._stopping.set()
        self._wake.set()
        self._closing.set()


if __name__ == "__main__":
    _receive(sys.argv[1:])
