"""What `GET /metrics` says, in Prometheus' text format (version 0.0.4): counters, gauges and
histograms written by hand, because the server needs a dozen series and no client library.

Counters and histograms are updated from the event loop and the scheduler's thread, under one lock;
gauges are read when /metrics is asked (callables), so that nothing has to keep them up to date.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{v}"' for k, v in labels] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclass
class Histogram:
    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; the last is +Inf
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def lines(self, name: str, labels: Labels) -> list[str]:
        out, running = [], 0
        counts = self.counts or [0] * (len(self.bounds) + 1)
        for bound, count in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
            running += count
            le = 'le="' + bound + '"'
            out.append(f"{name}_bucket{_labels(labels, le)} {running}")
        out += [f"{name}_sum{_labels(labels)} {self.total}", f"{name}_count{_labels(labels)} {running}"]
        return out


class Metrics:
    """A registry: `describe` each series once, then `inc`, `observe`, or a gauge's callable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str, Sequence[float] | Callable[[], float] | None]] = {}
        self._counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._histograms: dict[str, dict[Labels, Histogram]] = defaultdict(dict)

    def counter(self, name: str, help: str) -> None:
        self._help[name] = ("counter", help, None)

    def histogram(self, name: str, help: str, bounds: Sequence[float]) -> None:
        self._help[name] = ("histogram", help, bounds)

    def gauge(self, name: str, help: str, read: Callable[[], float], kind: str = "gauge") -> None:
        """A value read when /metrics is asked; `kind` "counter" for one that something else counts."""
        self._help[name] = (kind, help, read)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0) + value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._histograms[name]
            if key not in series:
                series[key] = Histogram(self._help[name][2])
            series[key].observe(value)

    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, help, extra) in self._help.items():
                lines += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
                if callable(extra):
                    lines.append(f"{name} {extra()}")
                elif kind == "counter":
                    lines += [f"{name}{_labels(k)} {v}" for k, v in self._counters[name].items()]
                else:
                    for k, h in self._histograms[name].items():
                        lines += h.lines(name, k)
        return "\n".join(lines) + "\n"
