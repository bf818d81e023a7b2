"""``civica traffic``: signal control runs, and the live traffic twin publishing into the store."""

from __future__ import annotations

import functools
import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from civica.core.store import Store
from civica.domains.traffic.congestion import TRAFFIC_JAM, CongestionWatch
from civica.domains.traffic.control import (
    BEST_CONTROLLER,
    ControlError,
    ScheduledHandBack,
    controller_names,
    run_control,
)
from civica.domains.traffic.engine import SumoError, SumoOptions, discharge_rates
from civica.domains.traffic.incidents import INCIDENT_SUSPECTED, IncidentConfig
from civica.domains.traffic.scenarios import (
    RESCO_SCENARIOS,
    Scenario,
    ScenarioError,
    from_files,
    from_sumocfg,
    resco_scenario,
)
from civica.domains.traffic.twin import (
    TwinError,
    TwinInterrupted,
    TwinRun,
    check_pairs,
    check_run,
    run_live,
    run_twin,
)

console = Console(stderr=True, soft_wrap=True)

# The ``civica`` group puts its ``--db`` opener here (click's shared ``Context.meta``), so the
# twin opens the store exactly as ``civica serve`` does without a domain importing the CLI.
OPEN_STORE = "civica.open_store"
EXIT_INTERRUPTED = 130  # the shell's code for a run ended by Ctrl-C (128 + SIGINT)


class TrafficCommandError(click.ClickException):
    """Bad input or a failed simulation: one line on stderr, exit code 2."""

    exit_code = 2


def _fail(err: Exception) -> TrafficCommandError:
    """A one-line error instead of a traceback."""
    return TrafficCommandError(str(err).splitlines()[0] if str(err) else type(err).__name__)


def _scenario(
    name: str | None, sumocfg: Path | None, net: Path | None, routes: tuple[Path, ...]
) -> Scenario:
    given = sum(x is not None for x in (name, sumocfg, net))
    if given != 1:
        raise ScenarioError("give exactly one of --scenario, --sumocfg or --net (with --routes)")
    if name is not None:
        return resco_scenario(name)
    if sumocfg is not None:
        return from_sumocfg(sumocfg)
    assert net is not None
    return from_files(net, routes)


def _hand_back(text: str, operator: str) -> ScheduledHandBack:
    tls_id, _, at = text.rpartition("@")
    try:
        return ScheduledHandBack(tls_id=tls_id, at_s=float(at), operator=operator)
    except ValueError as err:
        raise ControlError(f"--hand-back wants TLS_ID@SECONDS, got {text!r}") from err


def _pair(text: str) -> tuple[str, str]:
    """``FROM:TO`` as (origin, destination) detector ids."""
    origin, *rest = text.split(":")
    if len(rest) != 1:
        raise TwinError(f"--travel-time wants FROM:TO (two detector ids), got {text!r}")
    return origin, rest[0]


def _travel_summary(run: TwinRun) -> dict[str, int] | None:
    """The travel-time counts of a run, None when it had no --travel-time pair."""
    if not run.pairs:
        return None
    return {
        "pairs": len(run.pairs),
        "sightings": run.sightings,
        "matched": run.travel_times,
        "aggregates": run.travel_time_aggregates,
        "suppressed": run.travel_time_suppressed,
    }


def _progress(unit: str = "s") -> Progress:
    """A bar of simulated seconds (or other ``unit``) on stderr, in a terminal only (a log has
    nothing to redraw)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn(f"{{task.completed:>6.0f}}/{{task.total:.0f}} {unit}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,  # else it leaves a blank line before an error
    )


_SOURCE_OPTIONS = (
    click.option("--scenario", "name", default=None, help=f"RESCO: {', '.join(RESCO_SCENARIOS)}."),
    click.option("--sumocfg", type=click.Path(dir_okay=False, path_type=Path)),
    click.option("--net", type=click.Path(dir_okay=False, path_type=Path)),
    click.option("--routes", type=click.Path(dir_okay=False, path_type=Path), multiple=True),
)
_DEMAND_SCALE = click.option("--demand-scale", type=float, default=1.0, show_default=True)


def _with(command: Callable[..., None], options: tuple[Any, ...]) -> Callable[..., None]:
    for option in reversed(options):
        command = option(command)
    return command


def _scenario_source_options(command: Callable[..., None]) -> Callable[..., None]:
    """--scenario | --sumocfg | --net with --routes: what :func:`_scenario` resolves."""
    return _with(command, _SOURCE_OPTIONS)


def _scenario_options(command: Callable[..., None]) -> Callable[..., None]:
    """The scenario source options and the run's --seed and --demand-scale."""
    seed = click.option("--seed", type=int, default=0, show_default=True)
    return _with(command, (*_SOURCE_OPTIONS, seed, _DEMAND_SCALE))


@click.group()
def traffic() -> None:
    """Road traffic: SUMO scenarios, adaptive signal control and the live twin."""


@traffic.command()
@_scenario_options
@click.option(
    "--controller",
    type=click.Choice(controller_names()),
    default=BEST_CONTROLLER,
    show_default=True,
)
@click.option("--seconds", type=float, default=3600.0, show_default=True, help="Simulated.")
@click.option(
    "--hand-back",
    "hand_backs",
    multiple=True,
    help="Stop button: TLS_ID@SECONDS hands that intersection back to its fixed programme.",
)
@click.option("--operator", default="cli", show_default=True, help="Who pressed the button.")
def control(
    name: str | None,
    sumocfg: Path | None,
    net: Path | None,
    routes: tuple[Path, ...],
    controller: str,
    seconds: float,
    seed: int,
    demand_scale: float,
    hand_backs: tuple[str, ...],
    operator: str,
) -> None:
    """Run a scenario under a signal controller; print RESCO-style metrics as JSON."""
    try:
        scenario = _scenario(name, sumocfg, net, routes)
        presses = [_hand_back(text, operator) for text in hand_backs]
        options = SumoOptions(seconds=seconds, seed=seed, demand_scale=demand_scale)
    except (ScenarioError, ControlError, ValueError) as err:
        raise _fail(err) from err
    with _progress() as bar:
        task = bar.add_task(f"{scenario.name} · {controller}", total=seconds)
        try:
            result = run_control(
                scenario,
                controller,
                options,
                hand_backs=presses,
                on_step=lambda elapsed: bar.update(task, completed=elapsed),
            )
        except (SumoError, ControlError, ScenarioError, ValueError) as err:
            raise _fail(err) from err
    click.echo(json.dumps(result.as_dict(), indent=2))


@traffic.command()
@_scenario_source_options
@click.option("--seconds", type=float, default=3600.0, show_default=True, help="The window.")
@_DEMAND_SCALE
@click.option(
    "--measure",
    is_flag=True,
    help="Measure each loaded link's saturation flow in SUMO instead of the car-following limit.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="SUMO seed (--measure).")
def capacity(
    name: str | None,
    sumocfg: Path | None,
    net: Path | None,
    routes: tuple[Path, ...],
    seconds: float,
    demand_scale: float,
    measure: bool,
    seed: int,
) -> None:
    """How much of the time each light must be green to serve its demand, at the least.

    A bound no signal controller can beat (generous to the junction: no lost time, a
    permissive turn using every second its oncoming traffic leaves free, discharge at the
    car-following limit or, with --measure, at the rate SUMO itself lets each loaded link
    discharge on a permanent green of its own). Over 1: the light cannot carry its demand
    whatever the control; JSON, busiest light first.
    """
    from civica.domains.traffic.capacity import capacity_report

    try:
        scenario = _scenario(name, sumocfg, net, routes)
        if not scenario.route_files:
            raise ScenarioError("the capacity bound needs the scenario's route files")
        discharge = functools.partial(discharge_rates, scenario.net_file, seed=seed)
        with _progress(unit="runs") as bar:
            task = bar.add_task(f"{scenario.name} · saturation flows", total=1, visible=measure)
            report = capacity_report(
                scenario.net_file,
                scenario.route_files,
                scenario.begin,
                seconds,
                demand_scale,
                discharge=discharge if measure else None,
                on_round=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except (ScenarioError, SumoError, ValueError, OSError) as err:
        raise _fail(err) from err
    except ET.ParseError as err:
        raise _fail(ScenarioError(f"unreadable SUMO XML: {err}")) from err
    click.echo(json.dumps({"scenario": scenario.name, **report}, indent=2))


def _open_store(db: str | None) -> Store:
    """The store ``--db`` names, opened by the ``civica`` command line's own opener."""
    opener: Callable[[str | None], Store] | None = click.get_current_context().meta.get(OPEN_STORE)
    if opener is None:
        raise TrafficCommandError("the twin needs a store: run it as `civica traffic twin`")
    try:
        return opener(db)
    except click.ClickException as err:
        raise TrafficCommandError(err.message) from err


def _alert_counts(watch: CongestionWatch) -> dict[str, int]:
    """Alerts raised per kind; an alert upserted again when it resolves counts once."""
    ids: dict[str, set[str]] = {TRAFFIC_JAM: set(), INCIDENT_SUSPECTED: set()}
    for doc in watch.alerts:
        ids.setdefault(doc["subCategory"]["value"], set()).add(doc["id"])
    return {kind: len(found) for kind, found in ids.items()}


@traffic.command()
@_scenario_options
@click.option("--seconds", type=float, default=3600.0, show_default=True, help="Simulated.")
@click.option(
    "--interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Simulated seconds per published reading.",
)
@click.option(
    "--speed",
    type=float,
    default=1.0,
    show_default=True,
    help="Simulated seconds per wall-clock second (1 = real time, 0 = as fast as possible).",
)
@click.option(
    "--detector",
    "detectors",
    multiple=True,
    help="Publish only this detector (repeatable; default: all of them).",
)
@click.option(
    "--travel-time",
    "travel_times",
    multiple=True,
    metavar="FROM:TO",
    help="Travel times from detector FROM to TO, from hashed sightings (repeatable).",
)
@click.option("--tenant", default="", help="NGSILD-Tenant to publish into.")
@click.option(
    "--db",
    default=None,
    help="Database file or URL (default: $CIVICA_DATABASE_URL or ./civica.duckdb).",
)
@click.option("--no-watch", is_flag=True, help="Readings only: no congestion or incident alerts.")
def twin(
    name: str | None,
    sumocfg: Path | None,
    net: Path | None,
    routes: tuple[Path, ...],
    seconds: float,
    interval: float,
    speed: float,
    seed: int,
    demand_scale: float,
    detectors: tuple[str, ...],
    travel_times: tuple[str, ...],
    tenant: str,
    db: str | None,
    no_watch: bool,
) -> None:
    """Run a scenario on the platform clock; publish its detectors as TrafficFlowObserved.

    Readings (and, unless --no-watch, congestion and incident Alerts) go through ingest into
    the store; a JSON summary is printed at the end, also after Ctrl-C (exit code 130).
    With --travel-time, vehicles at those detectors are hashed at once (a key per simulated
    UTC day) and only travel-time aggregates of 5 or more vehicles are published.
    """
    from civica.core.bus import EventBus
    from civica.domains import domain_catalogue
    from civica.ingest.pipeline import Ingest
    from civica.privacy.gate import PrivacyGate

    try:
        scenario = _scenario(name, sumocfg, net, routes)
        check_run(seconds, interval, speed)
        pairs = check_pairs([_pair(text) for text in travel_times])
    except (ScenarioError, TwinError) as err:
        raise _fail(err) from err
    store = _open_store(db)
    started = time.monotonic()
    run: TwinRun
    watch: CongestionWatch | None = None  # with --no-watch there is none
    interrupted = False
    try:
        ingest = Ingest(store, PrivacyGate(domain_catalogue()), EventBus())
        with _progress() as bar:
            pace = "as fast as possible" if not speed else f"{speed:g}x"
            task = bar.add_task(f"{scenario.name} · {pace}", total=seconds)
            options: dict[str, Any] = {
                "seconds": seconds,
                "interval_s": interval,
                "tenant": tenant,
                "detectors": list(detectors) or None,
                "seed": seed,
                "demand_scale": demand_scale,
                "speed": speed,
                "travel_times": pairs,
                "on_step": lambda elapsed: bar.update(task, completed=elapsed),
            }
            if no_watch:
                run = run_twin(scenario, ingest, **options)
            else:
                run, watch = run_live(scenario, ingest, incident_config=IncidentConfig(), **options)
    except TwinInterrupted as stop:
        run, watch, interrupted = stop.run, stop.watch, True
    except (SumoError, TwinError, ScenarioError, ValueError) as err:
        raise _fail(err) from err
    finally:
        store.close()
    summary = {
        "scenario": scenario.name,
        "detectors": len(run.sites),
        "simulated_s": run.simulated_s,
        "interval_s": interval,
        "speed": speed,
        "intervals": run.intervals,
        "readings": run.readings,
        "alerts": None if watch is None else _alert_counts(watch),
        "travel_times": _travel_summary(run),
        "wall_s": round(time.monotonic() - started, 3),
        "interrupted": interrupted,
    }
    click.echo(json.dumps(summary, indent=2))
    if interrupted:
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
