"""Admission of a JSON batch body (parse → privacy gate), here or in worker processes.

Parsing and gating is pure Python and, with the GIL, one core's worth at most; the store
is written by one process anyway (one DuckDB file has one writer). ``AdmissionPool`` moves
the parse and the gate of large batch bodies into worker processes: the body goes there as
bytes, the admitted entities come back as one JSON document (``orjson`` decodes it several
times faster than the gate checked it), so the serving process keeps its core for HTTP,
merging and writing.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from civica.core.entity import Entity, looks_normalized, observations, parse_entity
from civica.core.ldcontext import CORE, LdContext
from civica.core.problems import Problem, ProblemKind, bad_request, invalid_request
from civica.core.readings import from_ipc, readings_table, to_ipc
from civica.privacy.catalogue import Catalogue
from civica.privacy.gate import PrivacyGate

# Bodies smaller than this are admitted in the serving process: the round trip would cost
# more than it saves.
MIN_OFFLOAD_BYTES = 32 * 1024

Refusals = list[tuple[str | None, Problem]]


def admit(gate: PrivacyGate, doc: Any, ctx: LdContext, key_values: bool | None) -> Entity:
    """Parse and gate one entity document; raise a Problem if it is refused."""
    if key_values is None:
        key_values = isinstance(doc, dict) and not looks_normalized(doc)
    if key_values and ctx.is_core and type(doc) is dict:
        fast = gate.admit_readings(doc)
        if fast is not None:
            return fast
    return gate.admit(parse_entity(doc, ctx, key_values=key_values))


def admit_all(
    gate: PrivacyGate, docs: Sequence[Any], ctx: LdContext, key_values: bool | None
) -> tuple[list[Entity], Refusals]:
    good: list[Entity] = []
    errors: Refusals = []
    for doc in docs:
        try:
            good.append(admit(gate, doc, ctx, key_values))
        except Problem as err:
            errors.append((entity_id_of(doc), err))
    return good, errors


def entity_id_of(doc: Any) -> str | None:
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        return str(doc["id"])[:256]
    return None


def batch_of(raw: bytes, max_batch: int) -> list[Any]:
    """The entity list of a batch body, or the Problem that refuses the whole body."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise invalid_request(f"the body is not valid JSON: {err}") from err
    if not isinstance(doc, list):
        raise bad_request("a batch must be a JSON array")
    if len(doc) > max_batch:
        raise bad_request(f"a batch may hold at most {max_batch} items")
    return doc


def admit_body(
    gate: PrivacyGate, raw: bytes, key_values: bool | None, max_batch: int
) -> tuple[list[Entity], Refusals]:
    """Parse a batch body in the core context and admit its entities."""
    return admit_all(gate, batch_of(raw, max_batch), CORE, key_values)


# ---- worker processes ----------------------------------------------------------------------
_WORKER: dict[str, PrivacyGate] = {}  # the worker process's gate, set when it starts


def _start_worker(catalogue: Catalogue) -> None:
    _WORKER["gate"] = PrivacyGate(catalogue)


def _problem_fields(problem: Problem) -> list[Any]:
    kind = problem.kind
    return [kind.name, kind.status, kind.namespace, problem.detail, problem.title, problem.extra]


def _problem_from(fields: list[Any]) -> Problem:
    name, status, namespace, detail, title, extra = fields
    return Problem(ProblemKind(name, status, namespace), detail, title=title, **extra)


def _admit_in_worker(raw: bytes, key_values: bool | None, max_batch: int) -> tuple[bytes, bytes]:
    try:
        good, errors = admit_body(_WORKER["gate"], raw, key_values, max_batch)
    except Problem as whole:
        return orjson.dumps({"refused": _problem_fields(whole)}), b""
    # The readings too: a reading without observedAt is stamped with its time of receipt.
    received = datetime.now(UTC)
    rows = [row for entity in good for row in observations(entity, received)]
    answer = {"good": good, "errors": [[eid, _problem_fields(p)] for eid, p in errors]}
    return orjson.dumps(answer), to_ipc(readings_table(rows))


class AdmissionPool:
    """Worker processes that parse and gate batch bodies for one serving process."""

    def __init__(self, gate: PrivacyGate, workers: int | None = None) -> None:
        self.gate = gate
        self.workers = workers if workers is not None else max(1, (os.cpu_count() or 2) - 1)
        # spawn, not fork: the serving process holds threads and a database connection.
        self._pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(gate.catalogue,),
        )
        # Start the workers now (a second or so), not on the first batch a sensor sends.
        self._pool.submit(len, b"").result()

    def admit_body(
        self, raw: bytes, key_values: bool | None, max_batch: int
    ) -> tuple[list[Entity], Refusals, pa.Table | None]:
        """(admitted entities, refusals, their readings as one table or None if not made)."""
        return self.submit_body(raw, key_values, max_batch)()

    def submit_body(
        self, raw: bytes, key_values: bool | None, max_batch: int
    ) -> Callable[[], tuple[list[Entity], Refusals, pa.Table | None]]:
        """Start admitting a body; the returned function waits for what ``admit_body`` gives.

        A caller that has more to do (the MQTT consumer merging the previous batch) does it
        meanwhile, while a worker parses this one.
        """
        if len(raw) < MIN_OFFLOAD_BYTES:
            done = (*admit_body(self.gate, raw, key_values, max_batch), None)
            return lambda: done
        future = self._pool.submit(_admit_in_worker, raw, key_values, max_batch)
        return lambda: _decoded(future.result())

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _decoded(done: tuple[bytes, bytes]) -> tuple[list[Entity], Refusals, pa.Table | None]:
    answer_json, readings = done
    answer = orjson.loads(answer_json)
    if "refused" in answer:
        raise _problem_from(answer["refused"])
    errors = [(eid, _problem_from(fields)) for eid, fields in answer["errors"]]
    return answer["good"], errors, from_ipc(readings)
