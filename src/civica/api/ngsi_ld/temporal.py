"""NGSI-LD temporal evolution of entities (6.18-6.19): history by time, lastN, aggregation.

History is kept for Property attributes only (see ``core.entity.observations``). The query
form (``GET /temporal/entities``) selects entities by their *current* state: ``type``,
``id``, ``idPattern``, ``attrs``, ``q`` and geo-queries filter today's entities, then their
history is returned. ``timerel=before`` is strictly before ``timeAt``, ``after`` strictly
after it, and ``between`` is [``timeAt``, ``endTimeAt``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from civica.api.http import (
    JSON,
    comma_list,
    json_response,
    negotiate,
    options_of,
    read_context,
    require_known_tenant,
    tenant_of,
    with_context,
)
from civica.api.ngsi_ld.entities import entity_query
from civica.api.services import Services, services
from civica.core.entity import PROPERTY, Observation, check_entity_id
from civica.core.ldcontext import LdContext
from civica.core.problems import TOO_MANY_RESULTS, Problem, bad_request, not_found
from civica.core.store import ObservationQuery
from civica.core.temporal import (
    AGGREGATE_METHODS,
    aggregate,
    instances,
    observed_value,
    parse_duration,
    split_series,
)
from civica.core.timefmt import format_time, parse_time

router = APIRouter(prefix="/temporal", tags=["temporal"])

MAX_INSTANCES = 1_000_000  # per request; narrow timerel or use lastN / aggregation beyond it
NORMALIZED, TEMPORAL_VALUES, AGGREGATED_VALUES = "normalized", "temporalValues", "aggregatedValues"
_JUST_AFTER = timedelta(microseconds=1)  # the store's time resolution


@dataclass(frozen=True)
class TemporalRequest:
    """What history to read and how to shape it."""

    start: datetime | None = None  # inclusive bound for the store
    end: datetime | None = None  # exclusive bound for the store
    interval_start: datetime | None = None  # the requested interval, for aggregation periods
    interval_end: datetime | None = None
    align: datetime | None = None  # where aggregation periods start (timeAt)
    last_n: int | None = None
    form: str = NORMALIZED
    methods: tuple[str, ...] = ()
    period: timedelta | None = None

    def observation_query(
        self, entity_ids: tuple[str, ...], attrs: tuple[str, ...] | None
    ) -> ObservationQuery:
        return ObservationQuery(
            entity_ids=entity_ids,
            attrs=attrs,
            start=self.start,
            end=self.end,
            last_n=self.last_n,
            limit=MAX_INSTANCES + 1,
        )


def temporal_request(params: Mapping[str, str], options: set[str]) -> TemporalRequest:
    """Validate timerel/timeAt/endTimeAt, lastN, aggrMethods and the representation."""
    prop = params.get("timeproperty")
    if prop is not None and prop != "observedAt":
        raise bad_request("timeproperty: only observedAt is supported")
    timerel = params.get("timerel")
    time_at, end_at = params.get("timeAt"), params.get("endTimeAt")
    at: datetime | None = None
    start = end = interval_start = interval_end = None
    if timerel is None:
        if time_at is not None or end_at is not None:
            raise bad_request("timeAt and endTimeAt need timerel (before, after or between)")
    else:
        if timerel not in ("before", "after", "between"):
            raise bad_request("timerel must be before, after or between")
        if time_at is None:
            raise bad_request(f"timerel={timerel} needs timeAt")
        at = parse_time(time_at, "timeAt")
        if timerel != "between" and end_at is not None:
            raise bad_request("endTimeAt goes with timerel=between only")
        if timerel == "between":
            if end_at is None:
                raise bad_request("timerel=between needs endTimeAt")
            until = parse_time(end_at, "endTimeAt")
            if until <= at:
                raise bad_request("endTimeAt must be later than timeAt")
            start = interval_start = at
            end = interval_end = until
        elif timerel == "before":
            end = interval_end = at
        else:
            if at == datetime.max.replace(tzinfo=at.tzinfo):
                raise bad_request("timeAt is the last representable instant; nothing is after it")
            start, interval_start = at + _JUST_AFTER, at
    last_n = _last_n(params.get("lastN"))
    form = _form(options, params.get("aggrMethods"))
    methods: tuple[str, ...] = ()
    period = None
    if form == AGGREGATED_VALUES:
        methods = comma_list(params.get("aggrMethods")) or ()
        for method in methods:
            if method not in AGGREGATE_METHODS:
                raise bad_request(
                    f"aggrMethods: {method!r} is not one of {', '.join(AGGREGATE_METHODS)}"
                )
        duration = params.get("aggrPeriodDuration")
        period = parse_duration(duration) if duration else None
    return TemporalRequest(
        start=start,
        end=end,
        interval_start=interval_start,
        interval_end=interval_end,
        align=at,
        last_n=last_n,
        form=form,
        methods=methods,
        period=period,
    )


def _last_n(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError as err:
        raise bad_request("lastN must be a whole number") from err
    if value < 1:
        raise bad_request("lastN must be at least 1")
    return value


def _form(options: set[str], aggr_methods: str | None) -> str:
    simplified = bool(options & {TEMPORAL_VALUES, "keyValues"})
    aggregated = AGGREGATED_VALUES in options or aggr_methods is not None
    if simplified and aggregated:
        raise bad_request("choose temporalValues or aggregatedValues, not both")
    if aggregated:
        if not aggr_methods:
            raise bad_request("options=aggregatedValues needs aggrMethods, e.g. avg,min,max")
        return AGGREGATED_VALUES
    return TEMPORAL_VALUES if simplified else NORMALIZED


def render_history(
    entity_id: str,
    entity_type: str,
    series: Mapping[str, Sequence[Observation]],
    req: TemporalRequest,
    ctx: LdContext,
    align: datetime | None,
) -> dict[str, Any]:
    """One entity in the temporal representation the request asked for."""
    out: dict[str, Any] = {"id": entity_id, "type": ctx.from_canonical(entity_type)}
    for name, rows in series.items():
        if req.form == TEMPORAL_VALUES:
            attr: Any = {
                "type": PROPERTY,
                "values": [[observed_value(o), format_time(o.observed_at)] for o in rows],
            }
        elif req.form == AGGREGATED_VALUES:
            attr = {"type": PROPERTY}
            results = aggregate(
                rows,
                req.methods,
                period=req.period,
                align=align,
                start=req.interval_start,
                end=req.interval_end,
            )
            for method, buckets in results.items():
                attr[method] = [
                    [b.value, format_time(b.start), format_time(b.end)] for b in buckets
                ]
        else:
            attr = instances(rows)
        out[ctx.from_canonical(name)] = attr
    return out


def _bounded(rows: list[Observation]) -> list[Observation]:
    _check_instances(len(rows))
    return rows


def _check_instances(count: int) -> None:
    if count > MAX_INSTANCES:
        raise Problem(
            TOO_MANY_RESULTS,
            f"more than {MAX_INSTANCES} instances; narrow timerel, or use lastN or aggrMethods",
        )


def _align(req: TemporalRequest, rows: Sequence[Observation]) -> datetime | None:
    """Periods start at timeAt, else at the first instance of the whole answer."""
    if req.align is not None or not rows:
        return req.align
    return min(o.observed_at for o in rows)


def _attrs(request: Request, ctx: LdContext) -> tuple[str, ...] | None:
    attrs = comma_list(request.query_params.get("attrs"))
    return tuple(ctx.to_canonical(a) for a in attrs) if attrs else None


@router.get("/entities/{entity_id}", summary="Temporal evolution of an entity")
def retrieve_history(
    entity_id: str, request: Request, svc: Services = Depends(services)
) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    tenant = tenant_of(request)
    require_known_tenant(tenant, svc.tenants)
    ctx, spec = read_context(request, svc.resolver)
    output = negotiate(request, spec)
    check_entity_id(entity_id)
    req = temporal_request(request.query_params, options_of(request))
    attrs = _attrs(request, ctx)
    query = req.observation_query((entity_id,), attrs)
    if spec is None and output.media_type == JSON and req.form == NORMALIZED and not req.last_n:
        # A plain history in the core context: the store renders the instances itself.
        docs = svc.store.history_documents(tenant, query)
        _check_instances(docs.instances)
        if docs.entity_type is not None:
            head = orjson.dumps({"id": entity_id, "type": docs.entity_type})[:-1].decode()
            parts = [f"{orjson.dumps(name).decode()}:{array}" for name, array in docs.attributes]
            text = head + "".join("," + part for part in parts) + "}"
            return Response(text.encode(), media_type=JSON)
    rows = _bounded(svc.store.query_observations(tenant, query))
    # The common case costs one query; only an empty answer asks whether the entity exists.
    entity_type = rows[0].entity_type if rows else _type_without_history(svc, tenant, entity_id)
    series = split_series(rows).get(entity_id, {})
    body = render_history(entity_id, entity_type, series, req, ctx, _align(req, rows))
    return json_response(with_context(body, output), output)


def _type_without_history(svc: Services, tenant: str, entity_id: str) -> str:
    """The type of an entity that has no instance in the window; 404 if it never existed."""
    current = svc.store.get_entities(tenant, [entity_id]).get(entity_id)
    if current is not None:
        return current.type
    anything = svc.store.query_observations(
        tenant, ObservationQuery(entity_ids=(entity_id,), last_n=1, limit=1)
    )
    if not anything:
        raise not_found(f"entity {entity_id} does not exist and has no history")
    return anything[0].entity_type


@router.get("/entities", summary="Query the temporal evolution of entities")
def query_history(request: Request, svc: Services = Depends(services)) -> Response:
    svc.keys.require(request.headers.get("Authorization"), "read")
    tenant = tenant_of(request)
    require_known_tenant(tenant, svc.tenants)
    ctx, spec = read_context(request, svc.resolver)
    output = negotiate(request, spec)
    req = temporal_request(request.query_params, options_of(request))
    query = entity_query(request, svc, ctx, dict(request.query_params))
    page = svc.store.query_entities(tenant, query)
    ids = tuple(s.id for s in page.items)
    rows: list[Observation] = []
    if ids:
        rows = _bounded(
            svc.store.query_observations(tenant, req.observation_query(ids, query.attrs))
        )
    grouped = split_series(rows)
    align = _align(req, rows)
    body = [
        with_context(render_history(s.id, s.type, grouped.get(s.id, {}), req, ctx, align), output)
        for s in page.items
    ]
    headers = {}
    if (request.query_params.get("count") or "").lower() == "true":
        headers["NGSILD-Results-Count"] = str(page.total)
    return json_response(body, output, headers=headers)
