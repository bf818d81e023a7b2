"""User @contexts: fetched once from a real HTTP server, cached, used to expand and compact."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from tests.livesrv import LiveServer

BASE = "/ngsi-ld/v1"
SDM = "https://smartdatamodels.org/dataModel.Lighting/"


class ContextServer:
    """Serves JSON-LD contexts and counts how often each was fetched."""

    def __init__(self) -> None:
        self.documents: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                body = outer.documents.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/ld+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def contexts() -> Iterator[ContextServer]:
    server = ContextServer()
    # "light" is a local alias of the default-vocabulary term "status"; "sdm:" terms are IRIs
    # outside the default vocabulary and stay full IRIs in storage.
    server.documents["/city.jsonld"] = orjson.dumps(
        {
            "@context": {
                "sdm": SDM,
                "lampState": "https://uri.etsi.org/ngsi-ld/default-context/status",
                "Lamp": "https://uri.etsi.org/ngsi-ld/default-context/Streetlight",
            }
        }
    )
    server.documents["/nested.jsonld"] = orjson.dumps(
        {
            "@context": [
                f"{server.url}/city.jsonld",
                {"glow": "https://uri.etsi.org/ngsi-ld/default-context/illuminanceLevel"},
            ]
        }
    )
    server.documents["/broken.jsonld"] = b"{not json"
    yield server
    server.close()


def link(url: str) -> str:
    return f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'


def test_link_context_expands_and_compacts(live: LiveServer, contexts: ContextServer) -> None:
    ctx_url = f"{contexts.url}/city.jsonld"
    doc = {
        "id": "urn:ngsi-ld:Streetlight:1",
        "type": "Lamp",
        "lampState": {"type": "Property", "value": "ok"},
    }
    with live.client() as c:
        r = c.post(f"{BASE}/entities", json=doc, headers={"Link": link(ctx_url)})
        assert r.status_code == 201, r.text
        # Stored canonically: a core-context client sees the default-vocabulary names.
        plain = c.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:1").json()
        assert plain["type"] == "Streetlight" and plain["status"]["value"] == "ok"
        # A client using the same context sees its own aliases, and a Link header back.
        mine = c.get(f"{BASE}/entities/urn:ngsi-ld:Streetlight:1", headers={"Link": link(ctx_url)})
        assert mine.json()["type"] == "Lamp" and "lampState" in mine.json()
        assert ctx_url in mine.headers["Link"]
        query = c.get(
            f"{BASE}/entities",
            params={"type": "Lamp", "q": 'lampState=="ok"'},
            headers={"Link": link(ctx_url)},
        )
        assert [e["id"] for e in query.json()] == ["urn:ngsi-ld:Streetlight:1"]
        for _ in range(3):
            c.get(f"{BASE}/types", headers={"Link": link(ctx_url)})
        assert contexts.hits["/city.jsonld"] == 1  # fetched once, then cached
        listed = c.get(f"{BASE}/jsonldContexts").json()
        assert ctx_url in listed
        details = c.get(f"{BASE}/jsonldContexts", params={"details": "true"}).json()
        assert any(d["URL"] == ctx_url and d["kind"] == "Cached" for d in details)


def test_body_context_and_nested_contexts(live: LiveServer, contexts: ContextServer) -> None:
    doc = {
        "@context": f"{contexts.url}/nested.jsonld",
        "id": "urn:ngsi-ld:Streetlight:2",
        "type": "Lamp",
        "glow": {"type": "Property", "value": 0.4},
    }
    with live.client() as c:
        r = c.post(
            f"{BASE}/entities",
            content=orjson.dumps(doc),
            headers={"Content-Type": "application/ld+json"},
        )
        assert r.status_code == 201, r.text
        stored = live.services.store.get_entities("default", ["urn:ngsi-ld:Streetlight:2"])
        assert stored["urn:ngsi-ld:Streetlight:2"].entity["illuminanceLevel"]["value"] == 0.4


def test_unreachable_context_is_ld_context_not_available(
    live: LiveServer, contexts: ContextServer
) -> None:
    with live.client() as c:
        for path in ("/missing.jsonld", "/broken.jsonld"):
            r = c.get(f"{BASE}/types", headers={"Link": link(contexts.url + path)})
            assert r.status_code == 503
            assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/LdContextNotAvailable"


def test_core_context_is_never_fetched(live: LiveServer) -> None:
    core = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.6.jsonld"
    with live.client() as c:
        # No network here: were the core context fetched, this would be a 503.
        r = c.get(f"{BASE}/types", headers={"Link": link(core)})
        assert r.status_code == 200
        assert c.get(f"{BASE}/jsonldContexts/core").json()["@context"]["observedAt"]
