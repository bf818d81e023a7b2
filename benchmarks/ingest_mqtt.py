"""MQTT ingest benchmark: readings published to Mosquitto, consumed by ``MqttIngest`` into DuckDB.

Prints one JSON object on stdout; progress goes to stderr.

    python benchmarks/ingest_mqtt.py                      # 200,000 messages, private broker
    python benchmarks/ingest_mqtt.py --messages 20000     # smoke run
    python benchmarks/ingest_mqtt.py --broker mqtt://127.0.0.1:1883   # an existing broker

The figure is messages per second *stored*: from the first byte published to the moment the
consumer has committed (or dead-lettered) the last message, checked afterwards by counting the
observations in the DuckDB file (two per reading).

Two choices keep the figure about the consumer:
- The publisher is a separate process writing pre-encoded QoS 1 PUBLISH packets straight to a
  socket (MQTT 3.1.1, a window of unacknowledged packets). A paho publisher tops out near
  10,000-18,000 messages/s on this 2-core machine and would be what is measured.
- By default the benchmark runs its own Mosquitto with ``max_queued_messages 0``. The whole
  burst reaches the broker within a second or two, long before the consumer has stored it; a
  broker with the default limit (1,000 queued beyond the consumer's 65,535 in flight) drops
  the rest, which is a broker setting, not a consumer speed. ``--broker`` uses another broker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from civica.app import build_services
from civica.cli import _tune_gc_for_serving
from civica.core.store import ObservationQuery
from civica.ingest.admission import AdmissionPool
from civica.ingest.mqtt import MqttIngest, MqttStats
from civica.storage import DuckDBStore

ENTITY_TYPE = "WaterObserved"
OBS_PER_MESSAGE = 2  # pressure and flow
WINDOW = 1_000  # unacknowledged PUBLISH packets the publisher allows itself
TARGET = 20_000

console = Console(stderr=True)


# ---- the publisher process ---------------------------------------------------------------------
def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


def _utf8(text: bytes) -> bytes:
    return struct.pack(">H", len(text)) + text


def sensor_id(i: int) -> str:
    return f"urn:ngsi-ld:{ENTITY_TYPE}:bench-{i:06d}"


def publish_packets(root: str, tenant: str, messages: int, sensors: int) -> list[bytes]:
    """One QoS 1 PUBLISH per reading (keyValues; id and type come from the topic)."""
    packets = []
    for i in range(messages):
        sensor = i % sensors
        topic = f"{root}/{tenant}/{ENTITY_TYPE}/{sensor_id(sensor)}".encode()
        reading = {"pressure": 20.0 + (i * 7 % 300) / 10, "flow": (sensor % 50) / 100}
        mid = i % 65_535 + 1
        body = _utf8(topic) + struct.pack(">H", mid) + orjson.dumps(reading)
        packets.append(_packet(0x32, body))
    return packets


def publisher(host: str, port: int, root: str, tenant: str, messages: int, sensors: int) -> None:
    """Connect, say ready, wait for 'go', publish everything, report the times (JSON lines)."""
    packets = publish_packets(root, tenant, messages, sensors)
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect = _utf8(b"MQTT") + bytes([4, 0x02]) + struct.pack(">H", 60)
    sock.sendall(_packet(0x10, connect + _utf8(f"bench-pub-{uuid.uuid4().hex}".encode())))
    if sock.recv(4) != b"\x20\x02\x00\x00":
        raise RuntimeError("the broker refused the publisher")
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()

    acked = 0
    done = threading.Condition()

    def read_acks() -> None:
        nonlocal acked
        pending = b""
        while acked < messages:
            data = sock.recv(1 << 16)
            if not data:
                break
            pending += data
            whole, rest = divmod(len(pending), 4)  # every PUBACK is 4 bytes
            pending = pending[len(pending) - rest :]
            with done:
                acked += whole
                done.notify()

    reader = threading.Thread(target=read_acks)
    reader.start()
    first = time.monotonic()
    sent = 0
    while sent < messages:
        with done:
            while sent - acked >= WINDOW:
                done.wait()
            chunk = min(messages - sent, WINDOW - (sent - acked))
        sock.sendall(b"".join(packets[sent : sent + chunk]))
        sent += chunk
    reader.join()
    last = time.monotonic()
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    print(json.dumps({"first": first, "last": last, "acked": acked}), flush=True)


# ---- the broker ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_broker(tmp: Path) -> Iterator[tuple[str, int]]:
    """A Mosquitto of our own that queues a whole burst instead of dropping it."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise SystemExit("mosquitto is not installed; pass --broker mqtt://host:port")
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nlog_dest none\n"
    )
    proc = subprocess.Popen([exe, "-c", str(conf)])
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark's mosquitto did not start")
            time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)


# ---- where the CPU went ---------------------------------------------------------------------
def _process_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and every descendant: {pid: (role, seconds)}.

    Linux only (``/proc``); elsewhere it is empty. The roles are told apart by command line.
    """
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    lines: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            raw = (entry / "cmdline").read_bytes()
            command = raw.replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
        lines[pid] = command
    mine = {os.getpid()}
    grew = True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in mine} - mine
        grew = bool(found)
        mine |= found
    return {pid: (_role(pid, lines[pid]), cpu[pid]) for pid in mine}


def _role(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "consumer process (merge, write)"
    if "mosquitto" in command:
        return "broker"
    if "ingest_mqtt.py publish" in command:
        return "load generator"
    if "civica.ingest" in command:
        return "MQTT receiver"
    if "multiprocessing" in command and "resource_tracker" not in command:
        return "admission workers"
    return "other"


def _cpu_between(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float
) -> dict[str, float]:
    """Share of one core each role used between two snapshots (1.0 = one whole core)."""
    used: dict[str, float] = {}
    for pid, (role, total) in after.items():
        # A process that has ended keeps its CPU time until it is reaped, but not its
        # command line: it keeps the role it had at the start.
        was, then = before.get(pid, (role, 0.0))
        used[was] = used.get(was, 0.0) + total - then
    return {role: round(t / seconds, 2) for role, t in sorted(used.items()) if t > 0}


# ---- the run -------------------------------------------------------------------------------------
def run(host: str, port: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    tenant = f"bench{uuid.uuid4().hex[:12]}"
    root = "civica"
    db = tmp / "bench.duckdb"
    store = DuckDBStore(db)
    # What ``civica serve --mqtt`` builds: the app's Ingest with its admission workers, and
    # the serving process's garbage-collector settings.
    ingest = build_services(store).ingest
    _tune_gc_for_serving()
    pool = None
    if args.ingest_workers:
        pool = ingest.admission = AdmissionPool(ingest.gate, args.ingest_workers)
    consumer = MqttIngest(
        ingest,
        f"mqtt://{host}:{port}",
        topic_root=root,
        group=f"bench-{uuid.uuid4().hex[:8]}",
        batch_size=args.batch_size,
        linger=args.linger,
    )
    command = [sys.executable, str(Path(__file__).resolve()), "publish", host, str(port)]
    command += [root, tenant, str(args.messages), str(args.sensors)]
    pub = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert pub.stdin is not None and pub.stdout is not None
    with console.status("preparing the publisher"):
        ready = pub.stdout.readline()
    if not ready:
        raise RuntimeError("the publisher failed to start")
    consumer.start()
    try:
        cpu_before, went = _process_cpu(), time.monotonic()
        pub.stdin.write("go\n")
        pub.stdin.flush()
        done_at, stats = _watch(consumer, args.messages)
        cpu = _cpu_between(cpu_before, _process_cpu(), time.monotonic() - went)
    finally:
        consumer.stop()
        if pool is not None:
            pool.close()
    published = json.loads(pub.stdout.readline() or "{}")
    pub.wait(30)
    # Counted through the Store protocol, which knows where its backend keeps recent rows.
    with console.status("counting stored observations"):
        observations = len(store.query_observations(tenant, ObservationQuery(attrs=("pressure",))))
        observations += len(store.query_observations(tenant, ObservationQuery(attrs=("flow",))))
        dead = store.count_dead_letters()
    store.close()
    stored = observations // OBS_PER_MESSAGE
    first = float(published.get("first", done_at))
    seconds = max(done_at - first, 1e-9)
    publish_seconds = float(published.get("last", first)) - first
    return {
        "benchmark": "mqtt_ingest",
        "messages": args.messages,
        "stored": stored,
        "observations": observations,
        "seconds": round(seconds, 3),
        "messages_per_s": round(stored / seconds),
        "dead_letters": dead,
        "sensors": args.sensors,
        "batch_size": args.batch_size,
        "received": stats.received,
        "batches": stats.batches,
        "publish_messages_per_s": round(args.messages / publish_seconds)
        if publish_seconds
        else None,
        "broker": args.broker or "private mosquitto (max_queued_messages 0)",
        "store": "DuckDBStore (file in a temp dir)",
        "ingest_workers": args.ingest_workers,
        # Cores each part used while the messages flowed: the broker and the load generator
        # share the machine's two cores with the consumer.
        "cores_used": cpu,
        "cores_used_total": round(sum(cpu.values()), 2),
        "cpus": os.cpu_count(),
        "target_messages_per_s": TARGET,
        "met": stored == args.messages and stored / seconds >= TARGET,
    }


def _watch(consumer: MqttIngest, messages: int) -> tuple[float, MqttStats]:
    """Poll the consumer until every message is settled (or nothing moves for 20 s)."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
        console=console,
    )
    with bar:
        task = bar.add_task("MQTT messages settled", total=messages)
        last_change, settled = time.monotonic(), 0
        while True:
            stats = consumer.stats()
            now = time.monotonic()
            done = stats.accepted + stats.dead_lettered
            if done != settled:
                settled, last_change = done, now
                bar.update(task, completed=done)
            if done >= messages:
                return now, stats
            if now - last_change > 20:
                console.print(f"[red]stalled at {done:,} of {messages:,} messages")
                return last_change, stats
            time.sleep(0.005)


def main() -> None:
    if len(sys.argv) == 8 and sys.argv[1] == "publish":
        where, port_text, root, tenant, messages, sensors = sys.argv[2:]
        publisher(where, int(port_text), root, tenant, int(messages), int(sensors))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="readings to publish")
    parser.add_argument("--sensors", type=int, default=10_000, help="distinct sensors")
    parser.add_argument("--batch-size", type=int, default=2_000, help="MqttIngest batch size")
    parser.add_argument("--linger", type=float, default=0.05, help="MqttIngest linger (s)")
    parser.add_argument(
        "--ingest-workers",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="admission worker processes, as civica serve starts them (0: none)",
    )
    parser.add_argument("--broker", help="use this broker (mqtt://host:port), not a private one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="civica-mqtt-bench-") as name:
        tmp = Path(name)
        if args.broker:
            url = urlsplit(args.broker)
            result = run(url.hostname or "127.0.0.1", url.port or 1883, tmp, args)
        else:
            with private_broker(tmp) as (host, port):
                result = run(host, port, tmp, args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
