"""Safe signal switching: minimum green, yellow and all-red clearance, maximum red.

Controllers only *ask* for a green phase; :class:`SafeSignal` decides when the lights may
actually change and shows the clearance states in between. Pure Python, no SUMO: the state
strings follow SUMO's convention (one character per controlled link, ``G``/``g`` green,
``y`` yellow, ``r`` red).

>>> yellow_and_all_red("GGrr", "rrGG")
('yyrr', 'rrrr')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

GREEN = frozenset("Gg")


class Stage(Enum):
    """What the intersection is showing."""

    GREEN = "green"
    YELLOW = "yellow"
    ALL_RED = "all-red"


@dataclass(frozen=True)
class SafetyRules:
    """Timing constraints every controller obeys (seconds)."""

    min_green_s: float = 5.0
    yellow_s: float = 3.0
    all_red_s: float = 2.0
    # a lane with halted vehicles gets green within this (SignalControl tells overdue()
    # which phases hold such a lane)
    max_red_s: float = 120.0

    def __post_init__(self) -> None:
        if self.min_green_s < 1 or self.yellow_s < 1 or self.all_red_s < 0:
            raise ValueError("min green and yellow must be at least 1 s, all-red at least 0 s")
        if self.max_red_s <= self.min_green_s:
            raise ValueError("max red must be longer than min green")


@dataclass(frozen=True)
class PhaseChange:
    """One change of what an intersection shows (for audit and for the safety tests)."""

    tls_id: str
    time: float
    stage: Stage
    state: str
    green_index: int  # the green phase shown, or the one being cleared towards


def is_green(char: str) -> bool:
    """Whether a SUMO link state lets vehicles go."""
    return char in GREEN


def yellow_and_all_red(current: str, target: str) -> tuple[str, str]:
    """The clearance states between two green states: links losing green turn yellow, then red.

    Links green in both keep their current state throughout; everything else is red.
    """
    if len(current) != len(target):
        raise ValueError("states must have one character per link")
    yellow = "".join(
        ("y" if not is_green(t) else c) if is_green(c) else "r"
        for c, t in zip(current, target, strict=True)
    )
    all_red = "".join(
        c if is_green(c) and is_green(t) else "r" for c, t in zip(current, target, strict=True)
    )
    return yellow, all_red


@dataclass
class SafeSignal:
    """One intersection's lights under the safety rules, driven by green-phase requests."""

    tls_id: str
    greens: tuple[str, ...]  # the green states a controller may choose from
    rules: SafetyRules
    now: float
    green: int = 0
    stage: Stage = Stage.GREEN
    since: float = 0.0
    last_served: list[float] = field(default_factory=list)
    changes: list[PhaseChange] = field(default_factory=list)
    _from: str = ""

    def __post_init__(self) -> None:
        if not self.greens:
            raise ValueError(f"{self.tls_id}: no green phases")
        self.since = self.now
        self.last_served = [self.now] * len(self.greens)
        self._record(Stage.GREEN, self.greens[self.green])

    @property
    def state(self) -> str:
        """The state string shown now."""
        return self.changes[-1].state

    def green_for(self, now: float) -> float:
        """Seconds the current green has been shown (0 during clearance)."""
        return now - self.since if self.stage is Stage.GREEN else 0.0

    def may_switch(self, now: float) -> bool:
        """Whether a new green may be requested now (min green served, not clearing)."""
        return self.stage is Stage.GREEN and now - self.since >= self.rules.min_green_s

    def overdue(self, now: float, demand: list[bool]) -> int | None:
        """A phase with waiting vehicles that has been red for max red, longest first."""
        late = [
            (self.last_served[i], i)
            for i, waiting in enumerate(demand)
            if waiting and i != self.green and now - self.last_served[i] >= self.rules.max_red_s
        ]
        return min(late)[1] if late else None

    def request(self, target: int, now: float) -> bool:
        """Start the change to this green if allowed; True if a change started."""
        if target == self.green or not self.may_switch(now):
            return False
        current = self.greens[self.green]
        self._from = current
        self.last_served[self.green] = now
        self.green = target
        self.since = now
        yellow, _ = yellow_and_all_red(current, self.greens[target])
        self.stage = Stage.YELLOW
        self._record(Stage.YELLOW, yellow)
        return True

    def tick(self, now: float) -> str | None:
        """Advance the clearance clock; the new state to show, or None if unchanged."""
        if self.stage is Stage.YELLOW and now - self.since >= self.rules.yellow_s:
            _, all_red = yellow_and_all_red(self._from, self.greens[self.green])
            self.stage, self.since = Stage.ALL_RED, now
            if self.rules.all_red_s > 0:
                self._record(Stage.ALL_RED, all_red)
                return all_red
        if self.stage is Stage.ALL_RED and now - self.since >= self.rules.all_red_s:
            self.stage, self.since = Stage.GREEN, now
            self.last_served[self.green] = now
            self._record(Stage.GREEN, self.greens[self.green])
            return self.state
        return None

    def _record(self, stage: Stage, state: str) -> None:
        self.changes.append(PhaseChange(self.tls_id, self.since, stage, state, self.green))
