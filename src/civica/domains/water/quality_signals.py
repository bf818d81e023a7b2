"""What one water-quality signal normally looks like, as streaming models (learn_one/score_one).

A reading is contaminant-like when it goes beyond what the station has shown, in the direction
a contaminant pushes the parameter (chlorine down, conductivity and turbidity up), on two
memories at once:

- the station's recent range (``RecentRange``): a low/high quantile of the last days' readings;
- the same time of day on previous days (``DailyAnalogs``): the extremes seen within an hour of
  this time of day. Stations whose water source switches with tank cycles and pump schedules
  see very different water at the same hour from one day to the next; the range tolerates
  that, and the time-of-day memory tolerates a new daily routine as soon as it has been seen.

The evidence is the smaller excursion, in sensor-noise sigmas (noise estimated from changes
between consecutive readings). Sensitivity is therefore set by how variable a station is:
about 3 noise sigmas beyond anything it has shown recently.

>>> model = SignalModel(PARAMETERS["mg/L"])  # chlorine: a contaminant lowers it
>>> for step in range(3 * 96):
...     model.learn_one({"time": step * 900.0, "value": 0.8 + 0.02 * (step % 3)})
>>> later = 3 * 86_400.0 + 3600.0
>>> model.score_one({"time": later, "value": 0.80}) <= 0
True
>>> round(model.score_one({"time": later, "value": 0.5}), 1)
14.3
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

DAY_S = 86_400.0
# Median absolute difference of consecutive readings / (0.6745 * sqrt 2) estimates white noise.
_MAD_DIFF_TO_SIGMA = 1.0 / (0.6745 * math.sqrt(2.0))
_CONSECUTIVE_S = 1800.0  # readings at most this far apart count as consecutive, s


@dataclass(frozen=True)
class QualityParameter:
    """A quality parameter a station measures, and which way a contaminant moves it."""

    name: str
    unit: str
    direction: int  # +1: a contaminant raises it; -1: it lowers it (chlorine is consumed)
    resolution: float  # in `unit`: the smallest noise sd trusted (sensor resolution)
    # A move of this parameter alone counts only once it has lasted this long, s: turbidity
    # spikes when flow changes stir up sediment, for minutes, with nothing else moving.
    alone_after_s: float = 0.0


# Keyed by the unit in sensors.csv, which is what tells the parameter (see the file contract).
PARAMETERS: dict[str, QualityParameter] = {
    p.unit: p
    for p in (
        QualityParameter("chlorine", "mg/L", -1, 0.01),
        QualityParameter("conductivity", "uS/cm", +1, 1.0),
        QualityParameter("turbidity", "NTU", +1, 0.01, alone_after_s=3600.0),
    )
}


@dataclass(frozen=True)
class QualityConfig:
    """Detector settings; the defaults are used for every network (no per-network tuning)."""

    train_days: float = 2.0  # days learned before any decision (the leak-free-days convention)
    range_days: float = 7.0  # the recent range covers this many days, days
    range_quantile: float = 0.01  # its edges: this quantile and 1 - it (rare spikes fall out)
    analog_days: int = 7  # previous days the time-of-day memory keeps, days
    analog_h: float = 1.0  # it looks this far either side of the time of day, h
    analog_rank: int = 3  # its edge: the n-th most extreme reading there (a spike is not normal)
    # A signal is regular (judged on the time-of-day memory alone) when fewer than this share
    # of its readings over the last range_days went beyond that memory by the threshold.
    regular_rate: float = 0.002
    threshold: float = 3.0  # evidence above which a reading is an outlier, sigmas
    window_h: float = 2.0  # the binomial window of recent outlier flags, h
    outlier_rate: float = 0.02  # share of outlier flags expected in normal operation
    strong: float = 1.5  # a strong outlier: evidence above this many thresholds
    strong_rate: float = 0.001  # share of strong outliers expected in normal operation
    level: float = 0.999  # event probability that raises an event
    release: float = 0.5  # event probability under which the event ends (hysteresis)
    relearn_h: float = 12.0  # an event this long is learned anyway (a new normal), h
    merge_h: float = 3.0  # station episodes starting within this of a running event merge, h


class RecentRange:
    """The range a signal kept over the last ``range_days``; ``score_one`` is how far a reading
    goes beyond its edge in the contaminant ``direction``, in sensor-noise sigmas."""

    def __init__(self, direction: int, resolution: float, config: QualityConfig | None = None):
        self.config = config or QualityConfig()
        self.direction = direction
        self.resolution = resolution
        self._history: deque[tuple[float, float]] = deque()  # (time, value), oldest first
        self._sorted: list[float] = []
        self._steps: deque[tuple[float, float]] = deque()  # (time, |change|) of consecutive pairs
        self._sorted_steps: list[float] = []
        self._last: tuple[float, float] | None = None
        self._since = math.inf

    def ready(self, time: float) -> bool:
        return time - self._since >= self.config.train_days * DAY_S

    def edge(self) -> float:
        """The range's edge on the contaminant side (unit); NaN before anything was learned."""
        n = len(self._sorted)
        if n == 0:
            return math.nan
        k = min(n - 1, int(self.config.range_quantile * n))
        return self._sorted[k] if self.direction < 0 else self._sorted[n - 1 - k]

    def noise(self) -> float:
        """Sensor noise sd estimated from changes between consecutive readings (unit)."""
        n = len(self._sorted_steps)
        median = self._sorted_steps[n // 2] if n else 0.0
        return max(median * _MAD_DIFF_TO_SIGMA, self.resolution)

    def score_one(self, x: Mapping[str, float]) -> float:
        time, value = x["time"], x["value"]
        if math.isnan(value) or not self.ready(time):
            return 0.0
        return self.direction * (value - self.edge()) / self.noise()

    def learn_one(self, x: Mapping[str, float]) -> None:
        time, value = x["time"], x["value"]
        if math.isnan(value):
            return
        self._since = min(self._since, time)
        if self._last is not None and 0 < time - self._last[0] <= _CONSECUTIVE_S:
            change = abs(value - self._last[1])
            self._steps.append((time, change))
            bisect.insort(self._sorted_steps, change)
        self._last = (time, value)
        self._history.append((time, value))
        bisect.insort(self._sorted, value)
        horizon = time - self.config.range_days * DAY_S
        for fifo, ordered in ((self._history, self._sorted), (self._steps, self._sorted_steps)):
            while fifo and fifo[0][0] < horizon:
                _, old = fifo.popleft()
                del ordered[bisect.bisect_left(ordered, old)]


class DailyAnalogs:
    """Readings around the same time of day on previous days; ``edge`` is the ``analog_rank``-th
    most extreme of them on the contaminant side (unit), NaN before a full day is known."""

    SLOT_S = 900.0

    def __init__(self, direction: int, config: QualityConfig | None = None) -> None:
        self.config = config or QualityConfig()
        self.direction = direction
        self._slots: list[deque[tuple[int, float]]] = [
            deque() for _ in range(round(DAY_S / self.SLOT_S))
        ]

    def edge(self, time: float) -> float:
        today = int(time // DAY_S)
        first = today - self.config.analog_days
        reach = round(self.config.analog_h * 3600.0 / self.SLOT_S)
        centre = int((time % DAY_S) // self.SLOT_S)
        n = len(self._slots)
        seen = [
            value
            for k in range(centre - reach, centre + reach + 1)
            for day, value in self._slots[k % n]
            if first <= day + (k < 0) - (k >= n) < today  # the slot's day, seen from today
        ]
        if not seen:
            return math.nan
        seen.sort(reverse=self.direction > 0)
        return seen[min(len(seen), self.config.analog_rank) - 1]

    def score_one(self, x: Mapping[str, float]) -> float:
        """Excursion beyond the edge in the contaminant direction (unit; 0 when unknown)."""
        edge = self.edge(x["time"])
        if math.isnan(edge) or math.isnan(x["value"]):
            return 0.0
        return self.direction * (x["value"] - edge)

    def learn_one(self, x: Mapping[str, float]) -> None:
        time, value = x["time"], x["value"]
        if math.isnan(value):
            return
        slot = self._slots[int((time % DAY_S) // self.SLOT_S)]
        day = int(time // DAY_S)
        slot.append((day, value))
        while slot and slot[0][0] < day - self.config.analog_days:
            slot.popleft()


class SignalModel:
    """One signal's normal behaviour; ``score_one`` is its contaminant-wise evidence (sigmas).

    A signal whose readings rarely go beyond the same hour of previous days (a regular one)
    is judged on that alone; an irregular one must also go beyond its recent range.
    """

    def __init__(self, parameter: QualityParameter, config: QualityConfig | None = None) -> None:
        self.config = config or QualityConfig()
        self.parameter = parameter
        self.range = RecentRange(parameter.direction, parameter.resolution, self.config)
        self.analogs = DailyAnalogs(parameter.direction, self.config)
        self._surprises: deque[tuple[float, bool]] = deque()
        self._surprised = 0

    def ready(self, time: float) -> bool:
        return self.range.ready(time)

    def regular(self) -> bool:
        """True when few recent readings went beyond the same hour of previous days."""
        n = len(self._surprises)
        return n > 0 and self._surprised / n < self.config.regular_rate

    def _beyond_hour(self, x: Mapping[str, float]) -> float:
        return self.analogs.score_one(x) / self.range.noise()

    def score_one(self, x: Mapping[str, float]) -> float:
        if math.isnan(x["value"]) or not self.ready(x["time"]):
            return 0.0
        beyond_hour = self._beyond_hour(x)
        if self.regular():
            return beyond_hour
        return min(self.range.score_one(x), beyond_hour)

    def observe_one(self, x: Mapping[str, float]) -> None:
        """Feed the time-of-day memory (every reading, anomalous or not)."""
        time = x["time"]
        if math.isnan(x["value"]):
            return
        if self.ready(time):
            surprise = self._beyond_hour(x) > self.config.threshold
            self._surprises.append((time, surprise))
            self._surprised += surprise
            while self._surprises and self._surprises[0][0] < time - self.config.range_days * DAY_S:
                self._surprised -= self._surprises.popleft()[1]
        self.analogs.learn_one(x)

    def learn_one(self, x: Mapping[str, float]) -> None:
        self.range.learn_one(x)
        self.observe_one(x)
