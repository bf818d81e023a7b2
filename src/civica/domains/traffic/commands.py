"""``civica traffic``: run SUMO scenarios under a signal controller and measure delay."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from civica.domains.traffic.control import (
    BEST_CONTROLLER,
    ControlError,
    ScheduledHandBack,
    controller_names,
    run_control,
)
from civica.domains.traffic.engine import SumoError, SumoOptions
from civica.domains.traffic.scenarios import (
    RESCO_SCENARIOS,
    Scenario,
    ScenarioError,
    from_files,
    from_sumocfg,
    resco_scenario,
)

console = Console(stderr=True, soft_wrap=True)


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


@click.group()
def traffic() -> None:
    """Road traffic: SUMO scenarios and adaptive signal control."""


@traffic.command()
@click.option("--scenario", "name", default=None, help=f"RESCO: {', '.join(RESCO_SCENARIOS)}.")
@click.option("--sumocfg", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--net", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--routes", type=click.Path(dir_okay=False, path_type=Path), multiple=True)
@click.option(
    "--controller",
    type=click.Choice(controller_names()),
    default=BEST_CONTROLLER,
    show_default=True,
)
@click.option("--seconds", type=float, default=3600.0, show_default=True, help="Simulated.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--demand-scale", type=float, default=1.0, show_default=True)
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
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:>6.0f}/{task.total:.0f} s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not sys.stderr.isatty(),
    ) as bar:
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
