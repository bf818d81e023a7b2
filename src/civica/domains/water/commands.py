"""``civica water``: generate leak scenarios and score leak detectors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from civica.domains.water.network import SimulationError, WaterInputError

console = Console(stderr=True, soft_wrap=True)


class WaterCommandError(click.ClickException):
    """Bad input or a failed simulation: one line on stderr, exit code 2."""

    exit_code = 2


def _fail(err: Exception) -> WaterCommandError:
    """A one-line error instead of a traceback."""
    return WaterCommandError(str(err).splitlines()[0] if str(err) else type(err).__name__)


@click.group()
def water() -> None:
    """Water networks: leak scenarios on EPANET models, detection and scoring."""


@water.command()
@click.option("--network", required=True, help="An .inp file or a shipped name (Net1, Net3, ...).")
@click.option("--days", type=int, default=7, show_default=True, help="Simulated days.")
@click.option("--leaks", type=int, default=2, show_default=True, help="Number of leaks.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--step", "step_s", type=int, default=900, show_default=True, help="Seconds.")
@click.option("--quality", is_flag=True, help="Also simulate chlorine and contaminant events.")
@click.option("--sensors", type=int, default=None, help="Pressure sensors (default: scaled).")
@click.option("--leak-free-days", type=int, default=2, show_default=True)
@click.option("--injections", type=int, default=None, help="With --quality (default: scaled).")
@click.option(
    "--districts/--no-districts",
    default=True,
    show_default=True,
    help="Meter the links between district metered areas (networks of 90+ junctions).",
)
def scenario(
    network: str,
    days: int,
    leaks: int,
    seed: int,
    out: Path,
    step_s: int,
    quality: bool,
    sensors: int | None,
    leak_free_days: int,
    injections: int | None,
    districts: bool,
) -> None:
    """Simulate a network with hidden leaks and write network.inp, readings, sensors, truth."""
    from civica.domains.water.scenario import ScenarioConfig, generate

    config = ScenarioConfig(
        network=network,
        days=days,
        leaks=leaks,
        seed=seed,
        step_s=step_s,
        leak_free_days=leak_free_days,
        sensors=sensors,
        quality=quality,
        injections=injections,
        districts=districts,
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not sys.stderr.isatty(),
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def show(stage: str, done: float, total: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            truth = generate(config, out, show)
        except (WaterInputError, SimulationError) as err:
            raise _fail(err) from err
    leaks_text = ", ".join(f"{x['pipe']} ({x['peak_flow'] * 1000:.2f} L/s)" for x in truth["leaks"])
    console.print(f"Scenario written to {out}: leaks on {leaks_text or 'no pipes'}")
    if truth.get("unbalanced_steps"):
        console.print(
            f"[yellow]EPANET could not balance {truth['unbalanced_steps']} hydraulic steps "
            "and carried on from the last solution there"
        )


@water.command()
@click.argument("scenario_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("leaks_file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--method", type=click.Choice(["mnf"]), default=None, help="Run a baseline.")
@click.option("--leak-free-days", type=int, default=2, show_default=True, help="For --method.")
def score(
    scenario_dir: Path, leaks_file: Path | None, method: str | None, leak_free_days: int
) -> None:
    """Score leak reports (a leaks.json, or a baseline's) against the scenario's truth."""
    from civica.domains.water.scoring import run_baseline, score_files

    try:
        if method is not None:
            detections = run_baseline(method, scenario_dir, leak_free_days)
        elif leaks_file is not None:
            detections = None
        else:
            raise WaterInputError("give a leaks.json file or --method")
        result = score_files(scenario_dir, leaks_file, detections)
    except (WaterInputError, SimulationError) as err:
        raise _fail(err) from err
    click.echo(json.dumps(result, indent=2))


@water.command()
@click.argument("scenario_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--leak-free-days", type=int, default=2, show_default=True)
def detect(scenario_dir: Path, out: Path, leak_free_days: int) -> None:
    """Find and locate leaks from network.inp, sensors.csv and readings.csv; write leaks.json."""
    from civica.domains.water.files import load_scenario
    from civica.domains.water.leaks import detect_leaks

    try:
        with console.status("Tracking the network model and scanning for leaks"):
            reports = detect_leaks(load_scenario(scenario_dir), leak_free_days=leak_free_days)
    except (WaterInputError, SimulationError) as err:
        raise _fail(err) from err
    out.write_text(json.dumps([r.to_json() for r in reports], indent=2) + "\n")
    console.print(f"{len(reports)} leak reports written to {out}")


@water.command("quality-detect")
@click.argument("scenario_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write events.json (default: standard output).",
)
@click.option(
    "--leak-free-days",
    "train_days",
    type=float,
    default=2.0,
    show_default=True,
    help="Days learned as normal before any decision.",
)
def quality_detect(scenario_dir: Path, out: Path | None, train_days: float) -> None:
    """Detect water-quality events (CANARY-style) in a scenario's quality readings."""
    from civica.core.problems import Problem
    from civica.domains.water.quality import QualityConfig, detect_scenario

    try:
        events = detect_scenario(scenario_dir, QualityConfig(train_days=train_days))
    except (WaterInputError, Problem) as err:
        raise _fail(err) from err
    text = json.dumps([e.to_json() for e in events], indent=2)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text + "\n")
        console.print(f"{len(events)} quality events written to {out}")


@water.command("quality-score")
@click.argument("scenario_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("events_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--grace-h",
    type=float,
    default=24.0,
    show_default=True,
    help="Hours after an injection ends in which an event still counts.",
)
def quality_score(scenario_dir: Path, events_file: Path, grace_h: float) -> None:
    """Score an events.json against the scenario's contaminant injections (JSON)."""
    from civica.core.problems import Problem
    from civica.domains.water.quality_scoring import score_scenario

    try:
        events = json.loads(events_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(ValueError(f"{events_file}: not valid JSON: {err}")) from err
    try:
        result = score_scenario(scenario_dir, events, grace_h=grace_h)
    except (WaterInputError, Problem) as err:
        raise _fail(err) from err
    click.echo(json.dumps(result.to_json(), indent=2))


@water.command()
@click.argument("scenario_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="DuckDB file to ingest into (default: a temporary one).",
)
@click.option("--tenant", default="", help="NGSILD-Tenant to ingest into.")
@click.option("--leak-free-days", type=int, default=2, show_default=True)
def live(scenario_dir: Path, db: Path | None, tenant: str, leak_free_days: int) -> None:
    """Replay a scenario through ingest with the live detectors on; print the Alerts raised."""
    import tempfile

    from civica.core.bus import EventBus
    from civica.domains import domain_catalogue
    from civica.domains.water.twin import run_live
    from civica.ingest.pipeline import Ingest
    from civica.privacy.gate import PrivacyGate
    from civica.storage import open_store

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(db or Path(tmp) / "live.duckdb"))
        try:
            ingest = Ingest(store, PrivacyGate(domain_catalogue()), EventBus())
            with Progress(
                TextColumn("replaying readings"), BarColumn(), TimeElapsedColumn(), console=console
            ) as bar:
                task = bar.add_task("replay", total=None)

                def step(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                alerts = run_live(
                    str(scenario_dir),
                    ingest,
                    tenant=tenant,
                    leak_free_days=leak_free_days,
                    progress=step,
                )
        except (WaterInputError, SimulationError, RuntimeError) as err:
            raise _fail(err) from err
        finally:
            store.close()
    summary = [
        {
            "id": a["id"],
            "subCategory": a["subCategory"]["value"],
            "dateIssued": a["dateIssued"]["value"],
            "description": a["description"]["value"],
            "candidateArea": a["candidateArea"]["value"],
        }
        for kind in ("leak", "quality")
        for a in alerts[kind]
    ]
    click.echo(json.dumps(summary, indent=2))
