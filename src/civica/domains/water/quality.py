"""Water-quality event detection (CANARY-style) over chlorine, conductivity and turbidity.

Per signal, streaming models of normal behaviour (quality_signals.py) turn each reading into
contaminant-wise evidence in sigmas (chlorine down, conductivity and turbidity up); a reading
is an outlier when its evidence passes a threshold. A binomial model over a window of recent
outlier flags, fused across the signals of a station, gives an event probability; an event is
raised when it passes a level, held until it falls back (hysteresis), and events at several
stations in the same time window are merged. Decisions come from ``StationWatch``, which keeps
anomalies out of what the models learn as normal.

>>> import pandas as pd
>>> times = pd.date_range("2026-01-01", periods=4 * 96, freq="15min", tz="UTC")
>>> readings = pd.DataFrame({"cl": 1.0}, index=times)
>>> readings.iloc[300:340, 0] = 0.4  # chlorine falls on day 4
>>> sensors = pd.DataFrame({"sensor_id": ["cl"], "kind": ["quality"],
...                         "element": ["J1"], "unit": ["mg/L"]})
>>> [(e.node, e.detected_at.isoformat()) for e in detect_events(readings, sensors)]
[('J1', '2026-01-04T03:15:00+00:00')]
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
from civica.domains.water.quality_signals import (
    PARAMETERS,
    QualityConfig,
    QualityParameter,
    SignalModel,
)

__all__ = [
    "PARAMETERS",
    "QualityConfig",
    "QualityEvent",
    "QualityParameter",
    "StationScorer",
    "StationWatch",
    "detect_events",
    "detect_scenario",
    "event_probability",
]

_EPOCH = pd.Timestamp(0, tz="UTC")


class StationScorer:
    """The signal models of one station; ``score_one`` is its strongest contaminant-wise
    evidence (sigmas). ``x`` maps ``"time"`` (epoch s) and signal names to readings."""

    def __init__(
        self, signals: Mapping[str, QualityParameter], config: QualityConfig | None = None
    ) -> None:
        self.config = config or QualityConfig()
        self.signals = dict(signals)
        self.models = {name: SignalModel(p, self.config) for name, p in self.signals.items()}

    def evidence(self, x: Mapping[str, float]) -> dict[str, float]:
        """Contaminant-wise evidence (sigmas) per signal with a reading in ``x``."""
        out: dict[str, float] = {}
        for name, model in self.models.items():
            value = x.get(name, math.nan)
            if not math.isnan(value):
                out[name] = model.score_one({"time": x["time"], "value": value})
        return out

    def ready(self, time: float) -> bool:
        return any(m.ready(time) for m in self.models.values())

    def score_one(self, x: Mapping[str, float]) -> float:
        return max(self.evidence(x).values(), default=0.0)

    def learn_one(self, x: Mapping[str, float]) -> None:
        for name, model in self.models.items():
            value = x.get(name, math.nan)
            if not math.isnan(value):
                model.learn_one({"time": x["time"], "value": value})


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
    """Decisions for one station: outlier flags, binomial window, hysteresis.

    It does not learn from anomalies: readings reach the station's recent range only after
    ``window_h`` of quarantine, and never when an event was raised meanwhile (unless the event
    has lasted ``relearn_h``: then it is taken as a new normal). The time-of-day memory takes
    every reading, so a routine that raised an event once is known the next day.
    """

    def __init__(
        self,
        node: str,
        signals: Mapping[str, QualityParameter],
        config: QualityConfig | None = None,
    ) -> None:
        self.node = node
        self.config = config or QualityConfig()
        self.scorer = StationScorer(signals, self.config)
        self._window: deque[tuple[float, int, int, int, frozenset[str]]] = deque()
        self._above_since: dict[str, float] = {}
        self._quarantine: deque[Mapping[str, float]] = deque()
        self._episode: Episode | None = None
        self.probability = 0.0

    @property
    def in_event(self) -> bool:
        """True while the station's event (raised at ``level``, held to ``release``) runs."""
        return self._episode is not None

    def update(self, x: Mapping[str, float]) -> Episode | None:
        """Take one reading time; return the station's episode when one has just ended."""
        cfg, time = self.config, x["time"]
        evidence = self.scorer.evidence(x)
        ready = self.scorer.ready(time)
        flagged = self._flags(evidence, time) if ready else frozenset()
        strong = sum(evidence[n] > cfg.strong * cfg.threshold for n in flagged)
        self._window.append((time, len(flagged), strong, len(evidence) if ready else 0, flagged))
        while self._window and self._window[0][0] <= time - cfg.window_h * 3600.0:
            self._window.popleft()
        flags = sum(w[1] for w in self._window)
        strong_flags = sum(w[2] for w in self._window)
        trials = sum(w[3] for w in self._window)
        # Two outlier levels: many moderate outliers, or a few far beyond anything normal.
        self.probability = max(
            event_probability(flags, trials, cfg.outlier_rate),
            event_probability(strong_flags, trials, cfg.strong_rate),
        )
        finished = self._decide(time, flagged)
        self._learn(x)
        return finished

    def _flags(self, evidence: Mapping[str, float], time: float) -> frozenset[str]:
        """Signals over the threshold; one that must persist when alone only once it has."""
        over = {n for n, z in evidence.items() if z > self.config.threshold}
        for name in list(self._above_since):
            if name not in over:
                del self._above_since[name]
        for name in over:
            self._above_since.setdefault(name, time)
        signals = self.scorer.signals
        out = set()
        for name in over:
            wait = signals[name].alone_after_s
            company = any(
                other != name and signals[other].name != signals[name].name for other in over
            )
            if company or time - self._above_since[name] >= wait:
                out.add(name)
        return frozenset(out)

    def _decide(self, time: float, flagged: frozenset[str]) -> Episode | None:
        cfg, episode = self.config, self._episode
        if episode is None:
            if self.probability >= cfg.level:
                self._episode = Episode(self.node, time, time, self.probability)
                for *_, names in self._window:
                    self._episode.signals |= names
                self._quarantine.clear()  # the onset of the anomaly is not learned
            return None
        if self.probability >= cfg.release:
            episode.end = time
            episode.probability = max(episode.probability, self.probability)
            episode.signals |= flagged
            return None
        self._episode = None
        return episode

    def _learn(self, x: Mapping[str, float]) -> None:
        cfg, time = self.config, x["time"]
        for name, model in self.scorer.models.items():
            if name in x:
                model.observe_one({"time": time, "value": x[name]})
        episode = self._episode
        if episode is not None and time - episode.start < cfg.relearn_h * 3600.0:
            return
        self._quarantine.append(x)
        while self._quarantine and self._quarantine[0]["time"] <= time - cfg.window_h * 3600.0:
            held = self._quarantine.popleft()
            for name, model in self.scorer.models.items():
                if name in held:
                    model.range.learn_one({"time": held["time"], "value": held[name]})

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
