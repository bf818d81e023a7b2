"""The ``civica`` command line: serve, demo, keys, dead letters, catalogue."""

from __future__ import annotations

import gc
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from civica.api.auth import ROLES, create_key, revoke_key
from civica.core.store import Store
from civica.domains import domain_catalogue
from civica.domains.traffic.commands import OPEN_STORE, traffic
from civica.domains.water.commands import water
from civica.storage import open_store

console = Console(stderr=True, soft_wrap=True)


def _stdout() -> Console:
    """A console for tables; wide when piped so rows are not folded into unreadable cells."""
    return Console() if sys.stdout.isatty() else Console(width=240)


DEFAULT_DB = "civica.duckdb"


def _database(db: str | None) -> str:
    return db or os.environ.get("CIVICA_DATABASE_URL") or DEFAULT_DB


def _open(db: str | None) -> Store:
    try:
        return open_store(_database(db))
    except (ValueError, OSError) as err:
        raise click.ClickException(str(err)) from err


@click.group()
@click.version_option(package_name="civica")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Civica: one live, privacy-preserving picture of a city's infrastructure."""
    ctx.meta[OPEN_STORE] = _open  # domain commands (civica traffic twin) open --db this way


db_option = click.option(
    "--db",
    default=None,
    help=f"Database file or URL (default: $CIVICA_DATABASE_URL or ./{DEFAULT_DB}).",
)


def _tune_gc_for_serving() -> None:
    """Collect garbage less often: ingest makes tens of thousands of small dicts per batch.

    With CPython's default thresholds (700, 10, 10) the collector then runs every few
    hundred allocations and walks the whole heap every few batches; in benchmarks/ingest.py
    that cost about a fifth of ingest throughput and a quarter of a 10,000-entity query.
    The objects made at start-up are frozen out of the collector's sight for good.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _run_server(
    store: Store, host: str, port: int, mqtt: str | None, ingest_workers: int | None = None
) -> None:
    import uvicorn

    from civica.app import build_services, create_app
    from civica.ingest.admission import AdmissionPool

    services = build_services(store)
    app = create_app(services)
    services.on_shutdown.append(store.close)
    _warm(store)
    if ingest_workers != 0:
        pool = AdmissionPool(services.ingest.gate, ingest_workers)
        services.ingest.admission = pool
        services.on_shutdown.append(pool.close)
    if mqtt:
        from civica.ingest.mqtt import MqttIngest

        consumer = MqttIngest(services.ingest, mqtt)
        consumer.start()
        services.on_shutdown.append(consumer.stop)
        console.print(f"MQTT ingest subscribed on {mqtt} (topics civica/<tenant>/<type>/<id>)")
    console.print(
        f"Civica API on http://{host}:{port}/ngsi-ld/v1/ (OpenAPI: http://{host}:{port}/docs)"
    )
    _tune_gc_for_serving()
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        gc.unfreeze()  # let interpreter shutdown reclaim everything as usual
        services.shut_down()  # already done by the app's lifespan, unless it never started


def _warm(store: Store) -> None:
    """Load recent entity states into the store's cache before the first request."""
    from civica.storage import DuckDBStore

    if isinstance(store, DuckDBStore):
        began = time.perf_counter()
        n = store.warm_state_cache()
        if n:
            took = time.perf_counter() - began
            console.print(f"Loaded {n:,} recent entity states into the cache in {took:.1f} s")


@main.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--mqtt", default=None, help="Broker URL to ingest from, e.g. mqtt://127.0.0.1:1883")
@click.option(
    "--ingest-workers",
    default=None,
    type=click.IntRange(min=0),
    help="Processes that parse and check large HTTP batches [default: CPUs - 1; 0: none].",
)
def serve(
    db: str | None, host: str, port: int, mqtt: str | None, ingest_workers: int | None
) -> None:
    """Run the API server (and MQTT ingest with --mqtt)."""
    _run_server(_open(db), host, port, mqtt, ingest_workers)


@main.command()
@click.option("--db", default="demo.duckdb", show_default=True, help="Demo database file.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--hours", default=24, show_default=True, type=int, help="History to seed.")
@click.option("--mqtt", default=None, help="Also ingest from this MQTT broker.")
@click.option("--no-serve", is_flag=True, help="Seed only, do not start the server.")
def demo(db: str, host: str, port: int, hours: int, mqtt: str | None, no_serve: bool) -> None:
    """Seed a small city with a day of history, then serve it."""
    from civica.app import build_services
    from civica.twin import seed_city

    path = Path(db)
    for stale in (path, Path(f"{db}.wal")):
        stale.unlink(missing_ok=True)
    store = _open(db)
    ingest = build_services(store).ingest
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    end -= timedelta(minutes=end.minute % 15)
    with Progress(console=console) as progress:
        task = progress.add_task("Seeding the demo city", total=None)

        def step(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = seed_city(ingest, end, hours=hours, progress=step)
    key = create_key(store, "admin", "demo admin")
    key_file = path.with_suffix(".key")
    key_file.write_text(key + "\n")
    console.print(
        f"Seeded {report.entities} assets and {report.observations} observations "
        f"({report.rejected} rejected) into {db}."
    )
    console.print(f"Admin API key (also in {key_file}):\n  {key}")
    console.print(f"Open the city map: http://{host}:{port}/#key={key}")
    base = f"http://{host}:{port}/ngsi-ld/v1"
    console.print(
        "Try:\n"
        f"  curl -H 'Authorization: Bearer {key}' '{base}/types'\n"
        f"  curl -H 'Authorization: Bearer {key}' "
        f"'{base}/entities?type=AirQualityObserved&options=keyValues&limit=3'\n"
        f"  curl -H 'Authorization: Bearer {key}' "
        f"'{base}/entities?type=Streetlight&q=status==%22defectiveLamp%22'"
    )
    if no_serve:
        store.close()
        return
    _run_server(store, host, port, mqtt)


@main.group()
def keys() -> None:
    """API keys (hashed at rest; the clear key is printed once)."""


@keys.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--label", default="", help="Who or what the key is for.")
@db_option
def keys_create(role: str, label: str, db: str | None) -> None:
    """Create a key and print it."""
    store = _open(db)
    try:
        click.echo(create_key(store, role, label))
    finally:
        store.close()


@keys.command("list")
@db_option
def keys_list(db: str | None) -> None:
    """List keys (ids, roles, labels; never the secrets)."""
    store = _open(db)
    try:
        table = Table("key id", "role", "label", "created", "revoked")
        for k in store.api_keys():
            table.add_row(k.key_id, k.role, k.label, k.created_at.isoformat(), str(k.revoked))
        _stdout().print(table)
    finally:
        store.close()


@keys.command("revoke")
@click.argument("key_id")
@db_option
def keys_revoke(key_id: str, db: str | None) -> None:
    """Revoke a key by its id."""
    store = _open(db)
    try:
        if not revoke_key(store, key_id):
            raise click.ClickException(f"no key {key_id}")
        click.echo(f"revoked {key_id}")
    finally:
        store.close()


@main.command("dead-letters")
@click.option("--limit", default=20, show_default=True, type=int)
@db_option
def dead_letters(limit: int, db: str | None) -> None:
    """Show the newest refused inputs and why they were refused."""
    store = _open(db)
    try:
        table = Table("received", "source", "tenant", "topic", "reason")
        for d in store.dead_letters(limit):
            table.add_row(d.received_at.isoformat(), d.source, d.tenant, d.topic or "", d.reason)
        _stdout().print(table)
        console.print(f"{store.count_dead_letters()} dead letters in all")
    finally:
        store.close()


@main.command()
def catalogue() -> None:
    """Print the data catalogue: every attribute the platform accepts, and why."""
    table = Table(
        "type",
        "attribute",
        "kind",
        "unit",
        "range",
        "person-derived",
        "retention (days)",
        "purpose",
    )
    for spec in domain_catalogue().types():
        for attr in spec.attributes.values():
            rng = "" if attr.minimum is None else f"{attr.minimum:g}..{attr.maximum:g}"
            table.add_row(
                spec.type,
                attr.name,
                attr.kind,
                attr.unit or "",
                rng,
                "yes" if attr.person_derived else "",
                str(attr.retention_days),
                attr.purpose,
            )
    _stdout().print(table)


main.add_command(water)
main.add_command(traffic)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
