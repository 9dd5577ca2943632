"""Is the machine quiet enough to time anything on? The benchmarks' guard (issue 26).

A figure measured while other work shares the cores measures that work too: on a 2-core machine at a
load of 3, a one-thread peer lost more than wordlm did and a ratio of 1.2x read as 2.4x. So a script
that times things opens a `MachineLoad` before its timings and closes it after; it refuses (BusyMachine)
when the machine was busy, unless told `--allow-busy`, and its table's header always says what the
load was (`header()`). `wordlm bench`, a user's command, never refuses: its results say the load.

Busy means, before the timings, a 1-minute load average above QUIET (nothing of the benchmark runs
yet); after them, the other processes' CPU time during the timings above QUIET cores on average (from
/proc/stat's busy and stolen time less this process's and its children's CPU time). The load average
after is recorded too, but it cannot be the test: it counts the benchmark's own threads (one thread
for 60 s lifts it to ~0.6 by itself).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

from wordlm.errors import WordLMError

QUIET = 0.5  # the 1-minute load (or other processes' cores) above which a machine is busy


class BusyMachine(WordLMError):
    """The machine was busy: a table of timings would measure the other work too."""


def load_average() -> float | None:
    """The 1-minute load average (/proc/loadavg; os.getloadavg elsewhere), None where there is none."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq) or stolen by the
    hypervisor since boot, from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """This process's CPU time, every thread, and that of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def add_argument(parser: argparse.ArgumentParser) -> None:
    """The scripts' --allow-busy."""
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help=f"write the table even when the machine was busy (load > {QUIET}); its header then says so",
    )


@dataclass
class MachineLoad:
    """The machine's load around a benchmark's timings: `start` before them, `stop` after."""

    allow_busy: bool = False
    limit: float = QUIET
    before: float | None = None  # the 1-minute load average as the timings began
    after: float | None = None  # and as they ended (the benchmark's own threads included)
    others: float | None = None  # other processes' CPU during the timings, in cores (None: unknown)
    seconds: float | None = None
    _t0: tuple = ()

    @classmethod
    def start(cls, allow_busy: bool = False, limit: float = QUIET, settle: float = 0.0) -> MachineLoad:
        """Read the load before the timings; BusyMachine now (before any time is spent) if it is above the
        limit, unless allow_busy. `settle`: seconds to wait first for the 1-minute average to fall below the
        limit, for a script whose own set-up (quantizing, exporting, compiling) has just lifted it."""
        deadline = time.monotonic() + settle
        while (now := load_average()) is not None and now > limit and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        load = cls(allow_busy, limit, before=load_average())
        if load.before is not None and load.before > limit and not allow_busy:
            raise BusyMachine(
                f"the machine is busy: 1-minute load average {load.before:.2f} > {limit} (other work shares "
                "the cores, and the timings would measure it); wait for a quiet machine, or pass --allow-busy "
                "to write the table anyway with the load in its header"
            )
        load._t0 = (time.monotonic(), _busy_cpu_seconds(), _own_cpu_seconds())
        return load

    def stop(self) -> MachineLoad:
        """Read the load after the timings; BusyMachine if other processes took more than `limit` cores on
        average meanwhile, unless allow_busy."""
        t0, busy0, own0 = self._t0
        self.after, self.seconds = load_average(), time.monotonic() - t0
        busy1 = _busy_cpu_seconds()
        if busy0 is not None and busy1 is not None and self.seconds > 0:
            self.others = max(0.0, (busy1 - busy0) - (_own_cpu_seconds() - own0)) / self.seconds
        if self.busy and not self.allow_busy:
            raise BusyMachine(
                f"the machine was busy during the timings: {self.describe()}; no table written (rerun on a "
                "quiet machine, or pass --allow-busy)"
            )
        return self

    @property
    def busy(self) -> bool:
        return any(x is not None and x > self.limit for x in (self.before, self.others))

    def describe(self) -> str:
        def fmt(x: float | None) -> str:
            return "unknown" if x is None else f"{x:.2f}"

        text = f"1-minute load average {fmt(self.before)} before, {fmt(self.after)} after"
        if self.seconds is not None:
            text += f" ({self.seconds:.1f} s of timings; other processes' CPU meanwhile {fmt(self.others)} cores)"
        return text

    def header(self) -> str:
        """A line for the table's header: the load, and whether the figures can be trusted."""
        if self.busy:
            return (
                f"**Measured on a busy machine**: {self.describe()}, above {self.limit}: other work shared the "
                "cores, so these timings (and ratios between them) are not those of a quiet machine."
            )
        return f"Machine quiet: {self.describe()} (limit {self.limit})."

    def as_dict(self) -> dict:
        """What a results document keeps, the header's text included."""
        return {
            "header": self.header(),
            "load_before": self.before,
            "load_after": self.after,
            "others_cores": self.others,
            "seconds": self.seconds,
            "limit": self.limit,
            "busy": self.busy,
            "allow_busy": self.allow_busy,
        }
