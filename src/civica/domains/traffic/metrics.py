"""Trip metrics as RESCO reports them, read from SUMO's tripinfo output.

Delay of a vehicle = ``timeLoss + departDelay`` (seconds): time lost driving below the ideal
speed plus time spent waiting to enter the network. Vehicles still driving at the end and
vehicles never inserted are written by SUMO with ``--tripinfo-output.write-unfinished`` and
``--tripinfo-output.write-undeparted`` and are counted, so a controller cannot look good by
keeping vehicles out of the network.

Unfinished is not the same as gridlocked: a vehicle that entered a minute before the end is
simply still on its way. ``stuck`` counts the unfinished vehicles that were due to depart at
least :data:`STUCK_AFTER_S` before the end, longer than any trip in the RESCO scenarios takes
at free flow, so it measures vehicles held up by the network rather than by the clock.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

STUCK_AFTER_S = 300.0


@dataclass(frozen=True)
class TripMetrics:
    """Average delay and trip time (s), throughput and unfinished counts of one run."""

    vehicles: int  # every vehicle due to depart before the end
    average_delay_s: float  # mean timeLoss + departDelay over all of them
    average_trip_time_s: float  # mean duration of the finished trips
    throughput: int  # vehicles that arrived
    not_finished: int  # still driving or never inserted at the end
    never_inserted: int
    stuck: int = 0  # unfinished although due to depart STUCK_AFTER_S or more before the end

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready figures."""
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def trip_metrics(tripinfo: Path, end: float | None = None) -> TripMetrics:
    """Metrics from a tripinfo file written with unfinished and undeparted vehicles.

    ``end`` is the simulated time the run stopped at; without it nothing counts as stuck.
    """
    delays: list[float] = []
    durations: list[float] = []
    not_finished = never_inserted = stuck = 0
    for _, element in ET.iterparse(tripinfo):
        if element.tag != "tripinfo":
            continue
        depart = float(element.get("depart", "-1"))
        arrival = float(element.get("arrival", "-1"))
        desired = float(element.get("departDelay", "0"))
        if depart < 0:
            # never inserted: SUMO writes its wait so far as departDelay; skip vehicles that
            # were only loaded ahead of their departure time
            if desired <= 0:
                continue
            never_inserted += 1
        delays.append(float(element.get("timeLoss", "0")) + desired)
        if arrival >= 0 and depart >= 0:
            durations.append(float(element.get("duration", "0")))
        else:
            not_finished += 1
            if end is not None:
                # due at its departure (or at the end, if still waiting) less its wait
                due = (depart if depart >= 0 else end) - desired
                stuck += end - due >= STUCK_AFTER_S
        element.clear()
    return TripMetrics(
        vehicles=len(delays),
        average_delay_s=sum(delays) / len(delays) if delays else 0.0,
        average_trip_time_s=sum(durations) / len(durations) if durations else 0.0,
        throughput=len(durations),
        not_finished=not_finished,
        never_inserted=never_inserted,
        stuck=stuck,
    )
