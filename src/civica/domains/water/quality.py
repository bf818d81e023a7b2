"""Water-quality event detection (CANARY-style) over chlorine, conductivity and turbidity.

Per signal, a time-of-day profile predicts the reading; the prediction residual, standardised
by how much that time of day varies from day to day, is an outlier when it exceeds a threshold
in the direction a contaminant pushes the parameter (chlorine down, conductivity and turbidity
up). A binomial model over a window of recent outlier flags, fused across the parameters of a
station, gives an event probability; an event is raised when it passes a level, held until it
falls back (hysteresis), and events at several stations in the same time window are merged.

>>> import pandas as pd
>>> times = pd.date_range("2026-01-01", periods=4 * 96, freq="15min", tz="UTC")
>>> readings = pd.DataFrame({"cl": 1.0}, index=times)
>>> readings.iloc[300:340, 0] = 0.4  # chlorine falls on day 4
>>> sensors = pd.DataFrame({"sensor_id": ["cl"], "kind": ["quality"],
...                         "element": ["J1"], "unit": ["mg/L"]})
>>> [(e.node, e.detected_at.isoformat()) for e in detect_events(readings, sensors)]
[('J1', '2026-01-04T03:30:00+00:00')]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from civica.core.problems import bad_request

DAY_S = 86_400.0
_EPOCH = pd.Timestamp(0, tz="UTC")


@dataclass(frozen=True)
class QualityParameter:
    """A quality parameter a station measures, and which way a contaminant moves it."""

    name: str
    unit: str
    direction: int  # +1: a contaminant raises it; -1: it lowers it (chlorine is consumed)
    resolution: float  # in `unit`: the smallest residual scale trusted (sensor resolution)


# Keyed by the unit in sensors.csv, which is what tells the parameter (see the file contract).
PARAMETERS: dict[str, QualityParameter] = {
    p.unit: p
    for p in (
        QualityParameter("chlorine", "mg/L", -1, 0.01),
        QualityParameter("conductivity", "uS/cm", +1, 2.0),
        QualityParameter("turbidity", "NTU", +1, 0.02),
    )
}


@dataclass(frozen=True)
class QualityConfig:
    """Detector settings; the defaults are used for every network (no per-network tuning)."""

    slot_s: float = 900.0  # width of a time-of-day slot of the profile, s
    train_days: float = 2.0  # days learned before any decision (the leak-free-days convention)
    memory_days: float = 3.0  # the profile forgets old days with this time constant, days
    neighbours: int = 2  # slots either side whose spread also bounds a slot's scale
    threshold: float = 3.0  # |standardised residual| above which a reading is an outlier, sigmas
    window_h: float = 2.0  # the binomial window of recent outlier flags, h
    outlier_rate: float = 0.02  # share of outlier flags expected in normal operation
    level: float = 0.999  # event probability that raises an event
    release: float = 0.5  # event probability under which the event ends (hysteresis)
    relearn_h: float = 12.0  # a signal off its profile this long is learned anyway (new normal), h
    merge_h: float = 3.0  # station episodes starting within this of a running event merge, h


class DiurnalProfile:
    """Time-of-day profile of one signal; ``score_one`` is its standardised residual (sigmas).

    ``x`` is ``{"time": <epoch s>, "value": <reading>}``. The score is 0 until the slot has
    been learned on ``train_days`` days, so a fresh profile never flags anything.
    """

    def __init__(self, resolution: float, config: QualityConfig | None = None) -> None:
        self.config = config or QualityConfig()
        self.resolution = resolution
        slots = max(1, round(DAY_S / self.config.slot_s))
        self._mean = [0.0] * slots
        self._var = [0.0] * slots
        self._days = [0.0] * slots  # learned days per slot (fractional with sub-slot steps)
        self._last_day = [-1] * slots
        self._min_alpha = 1.0 / max(self.config.memory_days, 1.0)

    def _slot(self, time: float) -> int:
        return int((time % DAY_S) // self.config.slot_s) % len(self._mean)

    def ready(self, time: float) -> bool:
        """True once the slot of ``time`` has been learned on enough days to score."""
        return self._days[self._slot(time)] >= self.config.train_days

    def predict_one(self, time: float) -> float:
        """Expected reading at ``time`` (NaN before the slot has been learned)."""
        slot = self._slot(time)
        return self._mean[slot] if self._days[slot] > 0 else math.nan

    def scale(self, time: float) -> float:
        """Residual scale at ``time``: the widest spread of the neighbouring slots (unit)."""
        slot, n = self._slot(time), len(self._mean)
        spread = max(
            self._var[(slot + k) % n]
            for k in range(-self.config.neighbours, 1 + self.config.neighbours)
        )
        return math.sqrt(max(spread, self.resolution**2))

    def score_one(self, x: Mapping[str, float]) -> float:
        time, value = x["time"], x["value"]
        if math.isnan(value) or not self.ready(time):
            return 0.0
        return (value - self.predict_one(time)) / self.scale(time)

    def learn_one(self, x: Mapping[str, float]) -> None:
        time, value = x["time"], x["value"]
        if math.isnan(value):
            return
        slot = self._slot(time)
        day = int(time // DAY_S)
        if self._days[slot] == 0:
            self._mean[slot] = value
            self._days[slot] = 1.0
            self._last_day[slot] = day
            return
        # Several readings can fall into one slot on one day: they share that day's weight.
        if day != self._last_day[slot]:
            self._days[slot] += 1.0
            self._last_day[slot] = day
        alpha = max(1.0 / self._days[slot], self._min_alpha)
        residual = value - self._mean[slot]
        self._mean[slot] += alpha * residual
        self._var[slot] += alpha * (residual * residual - self._var[slot])


class StationScorer:
    """The profiles of one station's signals; ``score_one`` is the largest contaminant-wise
    standardised residual (sigmas). ``x`` maps ``"time"`` (epoch s) and signal names to readings."""

    def __init__(
        self, signals: Mapping[str, QualityParameter], config: QualityConfig | None = None
    ) -> None:
        self.config = config or QualityConfig()
        self.signals = dict(signals)
        self._profiles = {
            name: DiurnalProfile(p.resolution, self.config) for name, p in self.signals.items()
        }

    def residuals(self, x: Mapping[str, float]) -> dict[str, float]:
        """Standardised residual per parameter present in ``x``, signed so + means contaminant."""
        out: dict[str, float] = {}
        for name, profile in self._profiles.items():
            value = x.get(name, math.nan)
            if not math.isnan(value):
                z = profile.score_one({"time": x["time"], "value": value})
                out[name] = z * self.signals[name].direction
        return out

    def ready(self, time: float) -> bool:
        return any(p.ready(time) for p in self._profiles.values())

    def score_one(self, x: Mapping[str, float]) -> float:
        return max(self.residuals(x).values(), default=0.0)

    def learn_one(self, x: Mapping[str, float]) -> None:
        for name, profile in self._profiles.items():
            value = x.get(name, math.nan)
            if not math.isnan(value):
                profile.learn_one({"time": x["time"], "value": value})


def event_probability(flags: int, trials: int, outlier_rate: float) -> float:
    """P(X < flags), X ~ B(trials, outlier_rate): confidence the outliers are not chance."""
    if flags <= 0 or trials <= 0:
        return 0.0
    p, q = outlier_rate, 1.0 - outlier_rate
    return math.fsum(
        math.comb(trials, i) * p**i * q ** (trials - i) for i in range(min(flags, trials + 1))
    )


@dataclass
class Episode:
    """A contiguous stretch during which one station's event probability stayed raised."""

    node: str
    start: float  # epoch s: when the probability first passed the level
    end: float  # epoch s: the last reading before it fell under the release level
    probability: float
    signals: set[str] = field(default_factory=set)  # the signals flagged during the episode


class StationWatch:
    """Decisions for one station: outlier flags, binomial window, hysteresis; it learns only
    readings that are not outliers and not inside an event (unless off-profile for long)."""

    def __init__(
        self,
        node: str,
        signals: Mapping[str, QualityParameter],
        config: QualityConfig | None = None,
    ) -> None:
        self.node = node
        self.config = config or QualityConfig()
        self.scorer = StationScorer(signals, self.config)
        self._window: deque[tuple[float, int, int, frozenset[str]]] = deque()
        self._off_since: dict[str, float] = {}
        self._episode: Episode | None = None
        self.probability = 0.0

    def update(self, x: Mapping[str, float]) -> Episode | None:
        """Take one reading time; return the station's episode when one has just ended."""
        cfg, time = self.config, x["time"]
        residuals = self.scorer.residuals(x)
        ready = self.scorer.ready(time)
        flagged = frozenset(n for n, z in residuals.items() if ready and z > cfg.threshold)
        self._window.append((time, len(flagged), len(residuals) if ready else 0, flagged))
        while self._window and self._window[0][0] <= time - cfg.window_h * 3600.0:
            self._window.popleft()
        flags = sum(k for _, k, _, _ in self._window)
        trials = sum(n for _, _, n, _ in self._window)
        self.probability = event_probability(flags, trials, cfg.outlier_rate)
        finished = self._decide(time, flagged)
        self._learn(x, residuals, time)
        return finished

    def _decide(self, time: float, flagged: frozenset[str]) -> Episode | None:
        cfg, episode = self.config, self._episode
        if episode is None:
            if self.probability >= cfg.level:
                self._episode = Episode(self.node, time, time, self.probability)
                for _, _, _, names in self._window:
                    self._episode.signals |= names
            return None
        if self.probability >= cfg.release:
            episode.end = time
            episode.probability = max(episode.probability, self.probability)
            episode.signals |= flagged
            return None
        self._episode = None
        return episode

    def _learn(self, x: Mapping[str, float], residuals: Mapping[str, float], time: float) -> None:
        relearn_s = self.config.relearn_h * 3600.0
        keep: dict[str, float] = {"time": time}
        for name, z in residuals.items():
            off = self._episode is not None or abs(z) > self.config.threshold
            if off:
                since = self._off_since.setdefault(name, time)
                if time - since < relearn_s:
                    continue
            else:
                self._off_since.pop(name, None)
            keep[name] = x[name]
        self.scorer.learn_one(keep)

    def close(self) -> Episode | None:
        """End of data: hand back a still-running episode."""
        episode, self._episode = self._episode, None
        return episode


@dataclass(frozen=True)
class QualityEvent:
    """A detected quality event: the first station that raised it, and every station that did."""

    node: str
    detected_at: datetime
    probability: float
    parameters: tuple[str, ...]
    stations: tuple[str, ...]
    ended_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The events.json form: times as ISO 8601 UTC with ``Z``."""
        return {
            "node": self.node,
            "detected_at": _iso(self.detected_at),
            "probability": round(self.probability, 6),
            "parameters": list(self.parameters),
            "stations": list(self.stations),
            "ended_at": _iso(self.ended_at),
        }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def quality_stations(sensors: pd.DataFrame) -> dict[str, dict[str, QualityParameter]]:
    """Quality sensors grouped by station node: ``{node: {sensor_id: parameter}}``."""
    stations: dict[str, dict[str, QualityParameter]] = {}
    for row in sensors.itertuples(index=False):
        if row.kind != "quality":
            continue
        parameter = PARAMETERS.get(str(row.unit))
        if parameter is None:
            known = ", ".join(PARAMETERS)
            raise bad_request(
                f"quality sensor {row.sensor_id}: unit {row.unit!r} is not one of {known}"
            )
        stations.setdefault(str(row.element), {})[str(row.sensor_id)] = parameter
    return stations


def detect_events(
    readings: pd.DataFrame, sensors: pd.DataFrame, config: QualityConfig | None = None
) -> list[QualityEvent]:
    """Quality events in ``readings`` (UTC-indexed, one column per sensor; NaN = missing)."""
    cfg = config or QualityConfig()
    stations = quality_stations(sensors)
    index = pd.DatetimeIndex(readings.index)
    if index.tz is None:
        raise bad_request("readings must be indexed by timezone-aware (UTC) timestamps")
    # Through a Timedelta: the index's integer unit (ns, us, s) varies with how it was made.
    times = ((index - _EPOCH) / pd.Timedelta(seconds=1)).to_numpy(dtype=float).tolist()
    episodes: list[Episode] = []
    for node, signals in stations.items():
        present = {sid: p for sid, p in signals.items() if sid in readings.columns}
        if not present:
            continue
        columns = {sid: readings[sid].to_numpy(dtype=float).tolist() for sid in present}
        watch = StationWatch(node, present, cfg)
        for i, time in enumerate(times):
            x = {"time": time} | {sid: values[i] for sid, values in columns.items()}
            finished = watch.update(x)
            if finished is not None:
                episodes.append(finished)
        last = watch.close()
        if last is not None:
            episodes.append(last)
    return merge_episodes(episodes, stations, cfg.merge_h)


def detect_scenario(
    directory: str | Path, config: QualityConfig | None = None
) -> list[QualityEvent]:
    """Quality events in a scenario directory's readings (never its truth.json)."""
    from civica.domains.water.files import load_scenario  # reads network.inp through WNTR

    scenario = load_scenario(directory)
    return detect_events(scenario.readings, scenario.sensors, config)


def merge_episodes(
    episodes: Sequence[Episode],
    stations: Mapping[str, Mapping[str, QualityParameter]],
    merge_h: float,
) -> list[QualityEvent]:
    """One event per group of station episodes that start within ``merge_h`` h of a running one."""
    groups: list[list[Episode]] = []
    group_end = -math.inf
    for episode in sorted(episodes, key=lambda e: (e.start, e.node)):
        if groups and episode.start <= group_end + merge_h * 3600.0:
            groups[-1].append(episode)
            group_end = max(group_end, episode.end)
        else:
            groups.append([episode])
            group_end = episode.end
    events = []
    for group in groups:
        first = group[0]
        names = {stations[e.node][s].name for e in group for s in e.signals}
        events.append(
            QualityEvent(
                node=first.node,
                detected_at=datetime.fromtimestamp(first.start, UTC),
                probability=max(e.probability for e in group),
                parameters=tuple(sorted(names)),
                stations=tuple(dict.fromkeys(e.node for e in group)),
                ended_at=datetime.fromtimestamp(max(e.end for e in group), UTC),
            )
        )
    return events
