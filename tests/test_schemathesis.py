"""Property-based API testing: schemathesis drives every operation of ``/openapi.json``.

No generated request may make the server fail (5xx), and every client error (4xx) must come
back as an RFC 7807 ProblemDetails body. The run is bounded (a few dozen examples per
operation, deterministic) so it stays well under two minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from schemathesis import Case, CheckContext, GenerationMode
from schemathesis.checks import not_a_server_error

from civica.app import build_services, create_app
from civica.storage import DuckDBStore, MemoryStore
from tests.livesrv import LiveServer, serve

MAX_EXAMPLES = 25
LD_CONTEXT_NOT_AVAILABLE = "https://uri.etsi.org/ngsi-ld/errors/LdContextNotAvailable"

# The handlers read NGSI-LD query parameters from the request rather than from typed
# arguments, so /openapi.json does not list them; declare them here so they get fuzzed too.
_QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", "/ngsi-ld/v1/entities"): [
        {"name": name, "in": "query", "schema": {"type": "string"}}
        for name in ("type", "id", "idPattern", "attrs", "q", "coordinates", "geoproperty")
    ]
    + [
        {
            "name": "georel",
            "in": "query",
            "schema": {
                "type": "string",
                "enum": ["near;maxDistance==500", "near;minDistance==10", "within", "intersects"],
            },
        },
        {
            "name": "geometry",
            "in": "query",
            "schema": {"type": "string", "enum": ["Point", "Polygon", "LineString"]},
        },
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "count", "in": "query", "schema": {"type": "boolean"}},
        {
            "name": "options",
            "in": "query",
            "schema": {"type": "string", "enum": ["keyValues", "sysAttrs", "simplified"]},
        },
    ],
    ("get", "/ngsi-ld/v1/entities/{entity_id}"): [
        {"name": "attrs", "in": "query", "schema": {"type": "string"}},
        {"name": "options", "in": "query", "schema": {"type": "string"}},
    ],
    ("get", "/ngsi-ld/v1/types"): [
        {"name": "details", "in": "query", "schema": {"type": "boolean"}},
    ],
}
_TEMPORAL_PARAMETERS: list[dict[str, Any]] = [
    {"name": "timerel", "in": "query", "schema": {"enum": ["before", "after", "between"]}},
    {"name": "timeAt", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "endTimeAt", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {"name": "lastN", "in": "query", "schema": {"type": "integer"}},
    {"name": "attrs", "in": "query", "schema": {"type": "string"}},
    {
        "name": "options",
        "in": "query",
        "schema": {"enum": ["temporalValues", "aggregatedValues", "sysAttrs"]},
    },
    {"name": "aggrMethods", "in": "query", "schema": {"type": "string"}},
    {"name": "aggrPeriodDuration", "in": "query", "schema": {"type": "string"}},
]
_QUERY_PARAMETERS[("get", "/ngsi-ld/v1/temporal/entities/{entity_id}")] = _TEMPORAL_PARAMETERS
_QUERY_PARAMETERS[("get", "/ngsi-ld/v1/temporal/entities")] = [
    *_TEMPORAL_PARAMETERS,
    *({"name": name, "in": "query", "schema": {"type": "string"}} for name in ("type", "id", "q")),
]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server for the whole run, holding a few real entities to find."""
    path: Path = tmp_path_factory.mktemp("schemathesis") / "civica.duckdb"
    store = DuckDBStore(path)
    with serve(build_services(store)) as server:
        with server.client() as http:
            seeded = http.post(
                "/ngsi-ld/v1/entityOperations/upsert",
                json=[_meter(i) for i in range(3)],
            )
            assert seeded.status_code == 201, seeded.text
            published = http.get("/openapi.json").json()
        assert _operations(published) == _operations(DOCUMENT), "the live server's API differs"
        yield server
    store.close()


def _meter(i: int) -> dict[str, Any]:
    return {
        "id": f"urn:ngsi-ld:WaterObserved:st-{i}",
        "type": "WaterObserved",
        "pressure": {"type": "Property", "value": 40.0 + i, "unitCode": "MTR"},
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [2.35, 48.85]},
        },
    }


def _document() -> dict[str, Any]:
    """The OpenAPI document of the composed app, with the NGSI-LD query parameters added.

    It is built in-process because schemathesis needs it at collection time, before any
    server runs; the ``api`` fixture checks the live server publishes the same operations.
    """
    document = create_app(build_services(MemoryStore())).openapi()
    for (method, path), params in _QUERY_PARAMETERS.items():
        operation = document["paths"].get(path, {}).get(method)
        if operation is not None:
            operation.setdefault("parameters", []).extend(params)
    return document


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,
    database="none",
)


def problem_details(ctx: CheckContext, response: schemathesis.Response, case: Case) -> None:
    """A 4xx (or a tolerated 5xx) carries ProblemDetails: type, title, status, detail."""
    del ctx, case
    if response.status_code < 400:
        return
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as err:
        raise AssertionError(f"{response.status_code} without a JSON body") from err
    assert isinstance(body, dict), f"{response.status_code} body is not an object: {body!r}"
    missing = {"type", "title", "status", "detail"} - body.keys()
    assert not missing, f"{response.status_code} ProblemDetails lacks {sorted(missing)}: {body}"
    assert body["status"] == response.status_code, body


def _context_unavailable(response: schemathesis.Response) -> bool:
    """A 503 LdContextNotAvailable is the spec's answer to an @context that cannot be fetched."""
    if response.status_code != 503:
        return False
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("type") == LD_CONTEXT_NOT_AVAILABLE


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, p) for p, ops in document["paths"].items() for m in ops}


@pytest.mark.slow
@schema.parametrize()
def test_api_never_fails_and_explains_errors(case: Case, api: LiveServer) -> None:
    response = case.call(base_url=api.url, headers={"Authorization": f"Bearer {api.admin_key}"})
    checks = [problem_details]
    if not _context_unavailable(response):
        checks.append(not_a_server_error)
    case.validate_response(response, checks=checks)


_DEEP = "[" * 300 + "]" * 300
_HISTORY = "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:st-0"
# Inputs that once made the server answer 500; random generation seldom finds such corners.
HOSTILE: list[tuple[str | None, ...]] = [
    ("GET", "/ngsi-ld/v1/entities?type=WaterObserved&offset=99999999999999999999", None),
    ("GET", "/ngsi-ld/v1/entities?idPattern=a{99999999999}", None),
    ("GET", "/ngsi-ld/v1/entities?type=WaterObserved&q=name~=a{99999999999}", None),
    ("GET", "/ngsi-ld/v1/entities?type=WaterObserved&q=" + "(" * 600 + "a" + ")" * 600, None),
    (
        "GET",
        "/ngsi-ld/v1/entities?georel=intersects&geometry=LineString&coordinates=[[0,0]]",
        None,
    ),
    (
        "POST",
        "/ngsi-ld/v1/entities",
        '{"id":"urn:h:1","type":"WaterObserved","location":{"type":"GeoProperty",'
        '"value":{"type":"LineString","coordinates":[[2.3,48.8]]}}}',
    ),
    (
        "POST",
        "/ngsi-ld/v1/entities",
        '{"id":"urn:h:2","type":"WaterObserved","pressure":{"type":"Property","value":1,'
        '"observedAt":"0001-01-01T00:00:00+14:00"}}',
    ),
    (
        "POST",
        "/ngsi-ld/v1/entities",
        '{"id":"urn:h:3","type":"WaterObserved","address":{"type":"Property","value":'
        + _DEEP
        + "}}",
    ),
    (
        "POST",
        "/ngsi-ld/v1/entities",
        '{"id":"urn:h:4","type":"WaterObserved","@context":' + _DEEP + "}",
        "application/ld+json",
    ),
    ("POST", "/ngsi-ld/v1/jsonldContexts", '{"@context":' + '{"a":' * 300 + "1" + "}" * 301),
    (
        "POST",
        "/ngsi-ld/v1/entityOperations/query",
        '{"type":"Query","geoQ":{"georel":5,"geometry":["Point"],"coordinates":[2,48]}}',
    ),
    ("POST", "/ngsi-ld/v1/entityOperations/query", '{"type":"Query","attrs":[' + _DEEP + "]}"),
    ("GET", f"{_HISTORY}?timerel=after&timeAt=9999-12-31T23:59:59.999999Z", None),
    (
        "GET",
        f"{_HISTORY}?options=aggregatedValues&aggrMethods=avg&aggrPeriodDuration=P9999999D"
        "&timerel=before&timeAt=9999-01-01T00:00:00Z",
        None,
    ),
]


@pytest.mark.parametrize("probe", HOSTILE)
def test_hostile_input_is_answered_cleanly(api: LiveServer, probe: tuple[str | None, ...]) -> None:
    method, path, content, *rest = probe
    assert method is not None and path is not None
    headers = {"Content-Type": rest[0] if rest and rest[0] else "application/json"}
    with api.client() as http:
        response = http.request(method, path, content=content, headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert {"type", "title", "status", "detail"} <= body.keys(), body
        assert body["status"] == response.status_code
