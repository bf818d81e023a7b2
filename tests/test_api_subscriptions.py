"""NGSI-LD subscriptions against a real server, notifications to a real local receiver."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from civica.app import build_services
from civica.storage import DuckDBStore
from tests.livesrv import LiveServer, free_port, serve

BASE = "/ngsi-ld/v1"
PIPE = "urn:ngsi-ld:WaterObserved:p1"


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that keeps every notification it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.answers: list[int] = []  # status codes to answer first (then 204)
        self._cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._cond:
                    receiver.bodies.append(orjson.loads(raw))
                    receiver.headers.append(dict(self.headers))
                    receiver._cond.notify_all()
                    status = receiver.answers.pop(0) if receiver.answers else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.bodies) >= count, timeout):
                raise AssertionError(f"{len(self.bodies)} notifications, expected {count}")
            return list(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def subscription(uri: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "Subscription",
        "entities": [{"type": "WaterObserved"}],
        "watchedAttributes": ["pressure"],
        "notification": {"attributes": ["pressure"], "endpoint": {"uri": uri}},
        **extra,
    }


def pipe(pressure: float, flow: float = 1.0) -> dict[str, Any]:
    return {
        "id": PIPE,
        "type": "WaterObserved",
        "pressure": {"type": "Property", "value": pressure},
        "flow": {"type": "Property", "value": flow},
    }


def patch(c: httpx.Client, **attrs: float) -> None:
    doc = {k: {"type": "Property", "value": v} for k, v in attrs.items()}
    r = c.patch(f"{BASE}/entities/{PIPE}/attrs", json=doc)
    assert r.status_code == 204, r.text


def create(c: httpx.Client, doc: dict[str, Any], **headers: str) -> str:
    r = c.post(f"{BASE}/subscriptions", json=doc, headers=headers)
    assert r.status_code == 201, r.text
    location: str = r.headers["Location"]
    return location.rsplit("/", 1)[1]


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_create_list_get_patch_delete(live: LiveServer) -> None:
    sid = "urn:ngsi-ld:Subscription:crud"
    with live.client() as c:
        doc = subscription("http://127.0.0.1:9/n", id=sid, q="pressure>10", throttling=5)
        r = c.post(f"{BASE}/subscriptions", json=doc)
        assert r.status_code == 201, r.text
        assert r.headers["Location"] == f"{BASE}/subscriptions/{sid}"
        again = c.post(f"{BASE}/subscriptions", json=doc)
        assert again.status_code == 409
        assert again.json()["type"].endswith("/AlreadyExists")
        other = create(c, subscription("https://hooks.example.org/x"))
        assert other.startswith("urn:ngsi-ld:Subscription:")

        got = c.get(f"{BASE}/subscriptions/{sid}").json()
        assert got["entities"] == [{"type": "WaterObserved"}]
        assert got["watchedAttributes"] == ["pressure"]
        assert got["q"] == "pressure>10"
        assert got["throttling"] == 5
        assert got["isActive"] is True and got["status"] == "active"
        assert got["notification"]["endpoint"] == {
            "uri": "http://127.0.0.1:9/n",
            "accept": "application/json",
        }
        assert got["notification"]["format"] == "normalized"
        assert got["notification"]["timesSent"] == 0
        assert "createdAt" not in got
        sys_attrs = c.get(f"{BASE}/subscriptions/{sid}", params={"options": "sysAttrs"}).json()
        assert sys_attrs["createdAt"].endswith("Z")

        listed = c.get(f"{BASE}/subscriptions", params={"count": "true", "limit": 1})
        assert listed.headers["NGSILD-Results-Count"] == "2"
        assert len(listed.json()) == 1
        both = c.get(f"{BASE}/subscriptions").json()
        assert sorted(s["id"] for s in both) == sorted([sid, other])

        change = {"isActive": False, "notification": {"format": "keyValues"}, "throttling": None}
        r = c.patch(f"{BASE}/subscriptions/{sid}", json=change)
        assert r.status_code == 204, r.text
        got = c.get(f"{BASE}/subscriptions/{sid}").json()
        assert got["status"] == "paused"
        assert got["notification"]["format"] == "keyValues"
        assert got["notification"]["endpoint"]["uri"] == "http://127.0.0.1:9/n"
        assert "throttling" not in got
        bad_patch = c.patch(f"{BASE}/subscriptions/{sid}", json={"throttling": -1})
        assert bad_patch.status_code == 400
        emptied = c.patch(
            f"{BASE}/subscriptions/{sid}", json={"watchedAttributes": None, "entities": None}
        )
        assert emptied.status_code == 400  # nothing left to watch
        assert c.patch(f"{BASE}/subscriptions/urn:x:none", json={"q": "a>1"}).status_code == 404

        other_tenant = c.get(f"{BASE}/subscriptions", headers={"NGSILD-Tenant": "east"})
        assert other_tenant.json() == []
        assert (
            c.get(f"{BASE}/subscriptions/{sid}", headers={"NGSILD-Tenant": "east"}).status_code
            == 404
        )

        assert c.delete(f"{BASE}/subscriptions/{sid}").status_code == 204
        assert c.get(f"{BASE}/subscriptions/{sid}").status_code == 404
        assert c.delete(f"{BASE}/subscriptions/{sid}").status_code == 404


def _bad_bodies() -> list[Any]:
    ok = subscription("http://127.0.0.1:9/n")
    note = ok["notification"]
    return [
        [],
        {**ok, "type": "Subscriptions"},
        {k: v for k, v in ok.items() if k != "type"},
        {**ok, "id": "not a uri"},
        {k: v for k, v in ok.items() if k != "notification"},
        {k: v for k, v in ok.items() if k not in ("entities", "watchedAttributes")},
        {**ok, "entities": {"type": "WaterObserved"}},
        {**ok, "entities": [{"id": "urn:x:1"}]},
        {**ok, "entities": [{"type": "WaterObserved", "idPattern": "("}]},
        {**ok, "entities": [{"type": "WaterObserved", "colour": "red"}]},
        {**ok, "watchedAttributes": []},
        {**ok, "watchedAttributes": "pressure"},
        {**ok, "q": "(pressure>1"},
        {**ok, "throttling": -1},
        {**ok, "throttling": True},
        {**ok, "isActive": "yes"},
        {**ok, "expiresAt": "2020-01-01T00:00:00Z"},
        {**ok, "expiresAt": "2999-01-01T00:00:00"},
        {**ok, "geoQ": {"georel": "near"}},
        {**ok, "notification": {**note, "format": "xml"}},
        {**ok, "notification": {**note, "attributes": "pressure"}},
        {**ok, "notification": {**note, "endpoint": {"uri": "ftp://127.0.0.1/n"}}},
        {**ok, "notification": {**note, "endpoint": {"uri": "file:///etc/passwd"}}},
        {**ok, "notification": {**note, "endpoint": {"uri": "http:///nohost"}}},
        {**ok, "notification": {**note, "endpoint": {"uri": "http://h/", "accept": "text/xml"}}},
        {**ok, "notification": {"attributes": ["pressure"]}},
        {**ok, "notification": {**note, "receiverInfo": []}},
    ]


def test_validation(live: LiveServer) -> None:
    with live.client() as c:
        for doc in _bad_bodies():
            r = c.post(f"{BASE}/subscriptions", json=doc)
            assert r.status_code == 400, (doc, r.text)
            assert r.json()["type"].endswith("/BadRequestData"), doc
        assert c.get(f"{BASE}/subscriptions").json() == []
        assert c.get(f"{BASE}/subscriptions/bad id").status_code == 400
    ok = subscription("http://127.0.0.1:9/n")
    with live.client(live.key("device")) as device:
        assert device.post(f"{BASE}/subscriptions", json=ok).status_code == 403
        assert device.get(f"{BASE}/subscriptions").status_code == 403
    with live.client(live.key("operator")) as operator:
        assert operator.post(f"{BASE}/subscriptions", json=ok).status_code == 201


def test_notifies_on_watched_change_only(live: LiveServer, receiver: Receiver) -> None:
    with live.client() as c:
        sid = create(c, subscription(receiver.url))
        assert c.post(f"{BASE}/entities", json=pipe(30)).status_code == 201
        first = receiver.wait_for(1)[0]
        assert first["type"] == "Notification"
        assert first["id"].startswith("urn:ngsi-ld:Notification:")
        assert first["subscriptionId"] == sid
        assert first["notifiedAt"].endswith("Z")
        assert first["data"] == [
            {
                "id": PIPE,
                "type": "WaterObserved",
                "pressure": {"type": "Property", "value": 30, "unitCode": "MTR"},
            }
        ]
        patch(c, flow=2.0)  # not watched: no notification
        patch(c, pressure=31)
        bodies = receiver.wait_for(2)
        assert [b["data"][0]["pressure"]["value"] for b in bodies] == [30, 31]
        assert receiver.headers[0]["Content-Type"] == "application/json"

        def sent_twice() -> bool:
            got = c.get(f"{BASE}/subscriptions/{sid}").json()["notification"]
            return bool(got["timesSent"] == 2)

        wait_until(sent_twice)
        note = c.get(f"{BASE}/subscriptions/{sid}").json()["notification"]
        assert note["status"] == "ok"
        assert note["lastSuccess"] == note["lastNotification"]
        assert "lastFailure" not in note


def test_q_key_values_and_id_pattern(live: LiveServer, receiver: Receiver) -> None:
    with live.client() as c:
        assert c.post(f"{BASE}/entities", json=pipe(30)).status_code == 201
        other = {**pipe(300), "id": "urn:ngsi-ld:WaterObserved:other"}
        assert c.post(f"{BASE}/entities", json=other).status_code == 201
        doc = subscription(receiver.url, q="pressure>100")
        doc["entities"] = [{"type": "WaterObserved", "idPattern": ".*:p[0-9]+$"}]
        doc["notification"] = {"format": "keyValues", "endpoint": {"uri": receiver.url}}
        create(c, doc)
        patch(c, pressure=50)  # q does not match
        c.patch(
            "/ngsi-ld/v1/entities/urn:ngsi-ld:WaterObserved:other/attrs",
            json={"pressure": {"type": "Property", "value": 350}},
        )  # idPattern does not match
        patch(c, pressure=150)
        bodies = receiver.wait_for(1)
        time.sleep(0.2)  # let a wrong extra notification show up, if one was coming
        assert len(receiver.bodies) == 1
        assert bodies[0]["data"] == [
            {"id": PIPE, "type": "WaterObserved", "pressure": 150, "flow": 1}
        ]


def test_throttling_coalesces_to_the_latest_state(live: LiveServer, receiver: Receiver) -> None:
    with live.client() as c:
        assert c.post(f"{BASE}/entities", json=pipe(10)).status_code == 201
        create(c, subscription(receiver.url, throttling=1))
        start = time.monotonic()
        for value in (11, 12, 13, 14, 15):
            patch(c, pressure=value)
        quick = time.monotonic() - start
        bodies = receiver.wait_for(2, timeout=5)
        time.sleep(0.3)
        assert quick < 0.9, "the updates were too slow to land in one throttling window"
        assert len(receiver.bodies) == 2
        assert bodies[0]["data"][0]["pressure"]["value"] == 11
        assert bodies[1]["data"][0]["pressure"]["value"] == 15


def test_failed_delivery_is_reported(live: LiveServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}/nobody"
    with live.client() as c:
        sid = create(c, subscription(dead))
        assert c.post(f"{BASE}/entities", json=pipe(10)).status_code == 201

        def failed() -> bool:
            note = c.get(f"{BASE}/subscriptions/{sid}").json()["notification"]
            return bool(note.get("status") == "failed")

        wait_until(failed)
        note = c.get(f"{BASE}/subscriptions/{sid}").json()["notification"]
        assert note["timesSent"] >= 1  # and it keeps trying, backing off
        assert "lastSuccess" not in note and note["lastFailure"]


def test_a_busy_endpoint_gets_the_latest_state_once_it_answers(
    live: LiveServer, receiver: Receiver
) -> None:
    """503, 503, then 204: the changes are kept and sent again (after 1 s, then 2 s), with
    the newest state of each entity; then the subscription reports success again."""
    receiver.answers = [503, 503]
    with live.client() as c:
        sid = create(c, subscription(receiver.url))
        assert c.post(f"{BASE}/entities", json=pipe(10)).status_code == 201
        receiver.wait_for(1)
        patch(c, pressure=11)  # while the endpoint is down: delivered with the retry
        bodies = receiver.wait_for(3, timeout=10)
        assert [b["data"][0]["pressure"]["value"] for b in bodies[:3]] == [10, 11, 11]

        # The receiver holds the body before its answer reaches the notifier, which only
        # then records the success.
        def succeeded() -> bool:
            note = c.get(f"{BASE}/subscriptions/{sid}").json()["notification"]
            return bool(note.get("status") == "ok")

        wait_until(succeeded)
        note = c.get(f"{BASE}/subscriptions/{sid}").json()["notification"]
        assert note["status"] == "ok" and note["lastSuccess"] >= note["lastFailure"]
        assert note["timesSent"] == 3


def test_an_endpoint_that_refuses_the_notification_is_not_asked_again(
    live: LiveServer, receiver: Receiver
) -> None:
    receiver.answers = [400]
    with live.client() as c:
        sid = create(c, subscription(receiver.url))
        assert c.post(f"{BASE}/entities", json=pipe(10)).status_code == 201
        receiver.wait_for(1)
        time.sleep(2.5)  # a retry would have come after 1 s
        assert len(receiver.bodies) == 1
        note = c.get(f"{BASE}/subscriptions/{sid}").json()["notification"]
        assert note["status"] == "failed" and note["timesSent"] == 1


def test_tenant_scoped_notifications(live: LiveServer, receiver: Receiver) -> None:
    with live.client() as c:
        create(c, subscription(receiver.url), **{"NGSILD-Tenant": "east"})
        assert c.post(f"{BASE}/entities", json=pipe(10)).status_code == 201  # default tenant
        r = c.post(f"{BASE}/entities", json=pipe(20), headers={"NGSILD-Tenant": "east"})
        assert r.status_code == 201
        bodies = receiver.wait_for(1)
        time.sleep(0.2)
        assert len(receiver.bodies) == 1
        assert bodies[0]["data"][0]["pressure"]["value"] == 20
        assert receiver.headers[0]["NGSILD-Tenant"] == "east"


def test_subscription_survives_restart(duckdb_path: Path, receiver: Receiver) -> None:
    sid = "urn:ngsi-ld:Subscription:durable"
    store = DuckDBStore(duckdb_path)
    with serve(build_services(store)) as first, first.client() as c:
        create(c, subscription(receiver.url, id=sid, q="pressure>5"))
        assert c.post(f"{BASE}/entities", json=pipe(10)).status_code == 201
        receiver.wait_for(1)
        admin_key = first.admin_key
    store.close()

    store = DuckDBStore(duckdb_path)
    try:
        with serve(build_services(store)) as second, second.client(admin_key) as c:
            got = c.get(f"{BASE}/subscriptions/{sid}")
            assert got.status_code == 200, got.text
            assert got.json()["q"] == "pressure>5"
            assert got.json()["notification"]["timesSent"] == 1  # counters were kept
            patch(c, pressure=12)
            assert receiver.wait_for(2)[1]["data"][0]["pressure"]["value"] == 12
    finally:
        store.close()


def test_client_context_names_and_json_ld(live: LiveServer, receiver: Receiver) -> None:
    url = "http://contexts.example/water.jsonld"
    vocab = "https://uri.etsi.org/ngsi-ld/default-context/"
    live.services.resolver.store(
        url, {"@context": {"druk": vocab + "pressure", "Water": vocab + "WaterObserved"}}, "Hosted"
    )
    link = f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"'
    doc = {
        "type": "Subscription",
        "entities": [{"type": "Water"}],
        "watchedAttributes": ["druk"],
        "q": "druk>100",
        "notification": {"attributes": ["druk"], "endpoint": {"uri": receiver.url}},
    }
    with live.client() as c:
        sid = create(c, doc, Link=link)
        mine = c.get(f"{BASE}/subscriptions/{sid}", headers={"Link": link}).json()
        assert mine["entities"] == [{"type": "Water"}]
        assert mine["watchedAttributes"] == ["druk"]
        core = c.get(f"{BASE}/subscriptions/{sid}").json()
        assert core["watchedAttributes"] == ["pressure"]
        assert core["entities"] == [{"type": "WaterObserved"}]
        patch_ld = {
            "notification": {"endpoint": {"uri": receiver.url, "accept": "application/ld+json"}}
        }
        assert c.patch(f"{BASE}/subscriptions/{sid}", json=patch_ld).status_code == 204
        assert c.post(f"{BASE}/entities", json=pipe(50)).status_code == 201  # q: no
        patch(c, pressure=150)
        body = receiver.wait_for(1)[0]
        assert body["data"] == [
            {
                "id": PIPE,
                "type": "Water",
                "druk": {"type": "Property", "value": 150, "unitCode": "MTR"},
            }
        ]
        assert body["@context"] == url
        assert receiver.headers[0]["Content-Type"] == "application/ld+json"
