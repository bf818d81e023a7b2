"""Signalised intersections as controllers see them: green phases and their movements.

Plain data read from SUMO by the engine; no SUMO import here, so controllers and tests work
on it directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from civica.domains.traffic.signals import is_green


@dataclass(frozen=True)
class ProgramPhase:
    """One phase of a signal programme: SUMO state string (one char per link) and duration."""

    state: str
    duration: float


@dataclass(frozen=True)
class SignalLayout:
    """An intersection as SUMO defines it: its fixed programme and what each link connects."""

    tls_id: str
    program_id: str
    phases: tuple[ProgramPhase, ...]
    # per link index: (incoming lane, outgoing lane), None for a link index without a lane
    links: tuple[tuple[str, str] | None, ...]


@dataclass(frozen=True)
class LaneReading:
    """What a lane looks like at the end of a step."""

    halting: int  # vehicles slower than 0.1 m/s
    vehicles: int
    waiting_s: float  # summed waiting time of the vehicles on the lane
    vehicle_ids: tuple[str, ...] = ()


def approach_reading(
    readings: Mapping[str, LaneReading], lane: str, upstream: Sequence[str]
) -> LaneReading | None:
    """A lane together with the short lanes feeding it, read as one approach."""
    parts = [r for name in (lane, *upstream) if (r := readings.get(name)) is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return LaneReading(
        halting=sum(r.halting for r in parts),
        vehicles=sum(r.vehicles for r in parts),
        waiting_s=sum(r.waiting_s for r in parts),
        vehicle_ids=tuple(v for r in parts for v in r.vehicle_ids),
    )


@dataclass(frozen=True)
class Movement:
    """Traffic from one incoming lane to one outgoing lane through the intersection."""

    in_lane: str
    out_lane: str


@dataclass(frozen=True)
class Junction:
    """The choices a controller has at one intersection.

    ``greens`` are the distinct green states of the fixed programme (phases with a green
    link and no yellow), ``program_index[i]`` the programme phase showing ``greens[i]``,
    ``movements[i]`` the movements green in it and ``durations[i]`` its fixed duration.
    """

    tls_id: str
    program_id: str
    greens: tuple[str, ...]
    program_index: tuple[int, ...]
    movements: tuple[tuple[Movement, ...], ...]
    durations: tuple[float, ...]

    @property
    def lanes(self) -> set[str]:
        """Every incoming and outgoing lane of the intersection."""
        return {lane for group in self.movements for m in group for lane in (m.in_lane, m.out_lane)}

    @property
    def in_lanes(self) -> tuple[tuple[str, ...], ...]:
        """Per green phase, its distinct incoming lanes."""
        return tuple(tuple(dict.fromkeys(m.in_lane for m in group)) for group in self.movements)


def junction_of(layout: SignalLayout) -> Junction | None:
    """The controller's view of an intersection; None if its programme has no green phase."""
    greens: list[str] = []
    index: list[int] = []
    durations: list[float] = []
    for i, phase in enumerate(layout.phases):
        state = phase.state
        if "y" in state or not any(is_green(c) for c in state) or state in greens:
            continue
        if len(state) != len(layout.links):
            continue
        greens.append(state)
        index.append(i)
        durations.append(phase.duration)
    if len(greens) < 2:
        return None
    movements = tuple(
        tuple(
            dict.fromkeys(
                Movement(*link)
                for link, char in zip(layout.links, state, strict=True)
                if link is not None and is_green(char)
            )
        )
        for state in greens
    )
    return Junction(
        tls_id=layout.tls_id,
        program_id=layout.program_id,
        greens=tuple(greens),
        program_index=tuple(index),
        movements=movements,
        durations=tuple(durations),
    )
