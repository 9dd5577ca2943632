"""The benchmarks' guard against busy machines (wordlm/bench/machine_load.py): refusing, --allow-busy, the header."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wordlm.bench import machine_load
from wordlm.bench.machine_load import BusyMachine, MachineLoad

ROOT = Path(__file__).resolve().parents[1]


def _fake(monkeypatch, load: float, machine_cpu: list[float], own_cpu: list[float]) -> None:
    """A load average of `load`, and successive readings of the machine's busy CPU seconds and this
    process's (the first at start, the second at stop)."""
    monkeypatch.setattr(machine_load, "load_average", lambda: load)
    monkeypatch.setattr(machine_load, "_busy_cpu_seconds", lambda: machine_cpu.pop(0))
    monkeypatch.setattr(machine_load, "_own_cpu_seconds", lambda: own_cpu.pop(0))


def test_the_load_is_read_from_this_machine():
    load = machine_load.load_average()
    assert load is None or load >= 0
    if Path("/proc/stat").exists():
        assert machine_load._busy_cpu_seconds() > 0


def test_a_busy_machine_is_refused_before_any_timing(monkeypatch):
    _fake(monkeypatch, 1.7, [100.0, 100.0], [5.0, 5.0])
    with pytest.raises(BusyMachine, match=r"load average 1\.70 > 0\.5.*--allow-busy"):
        MachineLoad.start()


def test_settle_waits_for_the_set_ups_own_load_to_fall(monkeypatch):
    """A script's set-up lifted the load average: `settle` waits for it to fall below the limit (and
    refuses as before if it does not in time)."""
    _fake(monkeypatch, 0.0, [100.0, 100.0], [5.0, 5.0])
    readings = [0.9, 0.7, 0.4, 0.4]
    monkeypatch.setattr(machine_load, "load_average", lambda: readings.pop(0))
    slept = []
    monkeypatch.setattr(machine_load.time, "sleep", slept.append)
    assert MachineLoad.start(settle=60).before == 0.4 and len(slept) == 2
    monkeypatch.setattr(machine_load, "load_average", lambda: 0.9)
    with pytest.raises(BusyMachine, match="load average 0.90"):
        MachineLoad.start(settle=0.01)


def test_other_work_during_the_timings_is_refused(monkeypatch):
    """Before: quiet. During: the machine spent 30 CPU seconds busy in 10 s of which 10 were ours: the
    others took 2 cores. Our own CPU is not counted against us."""
    _fake(monkeypatch, 0.1, [100.0, 130.0], [5.0, 15.0])
    load = MachineLoad.start()
    monkeypatch.setattr(load, "_t0", (load._t0[0] - 10, *load._t0[1:]))  # 10 s of timings
    with pytest.raises(BusyMachine, match=r"other processes' CPU meanwhile 2\.00 cores"):
        load.stop()


def test_a_quiet_run_says_so_even_with_its_own_load(monkeypatch):
    """One thread of ours for 60 s lifts the load average to ~0.6 by itself: not busy."""
    _fake(monkeypatch, 0.1, [100.0, 160.5], [5.0, 65.0])
    load = MachineLoad.start()
    monkeypatch.setattr(machine_load, "load_average", lambda: 0.63)
    monkeypatch.setattr(load, "_t0", (load._t0[0] - 60, *load._t0[1:]))
    load.stop()
    assert not load.busy and load.others == pytest.approx(0.5 / 60, rel=0.01)
    assert load.header().startswith("Machine quiet: 1-minute load average 0.10 before, 0.63 after")
    assert load.as_dict()["busy"] is False


def test_allow_busy_writes_the_load_into_the_header(monkeypatch):
    _fake(monkeypatch, 2.5, [100.0, 120.0], [5.0, 15.0])
    load = MachineLoad.start(allow_busy=True)
    monkeypatch.setattr(load, "_t0", (load._t0[0] - 10, *load._t0[1:]))
    load.stop()
    assert load.busy and load.as_dict()["load_before"] == 2.5
    assert load.header().startswith("**Measured on a busy machine**: 1-minute load average 2.50 before")


@pytest.mark.parametrize("script", ["kernels.py", "runtime.py"])
def test_the_benchmark_scripts_refuse_a_busy_machine_and_write_nothing(script, tmp_path):
    """Each script under a load of 9: a one-line refusal before any timing, its table left as it was."""
    table = ROOT / "benchmarks" / ("runtime.md" if script == "runtime.py" else "kernels.md")
    before = table.read_bytes() if table.exists() else None
    out = ["--out", str(tmp_path / "out.md")] if script == "runtime.py" else []
    code = (
        "import runpy, sys; import wordlm.bench.machine_load as m; m.load_average = lambda: 9.0\n"
        f"sys.argv = ['{script}', *{out!r}]\n"
        f"runpy.run_path({str(ROOT / 'benchmarks' / script)!r}, run_name='__main__')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 1, run.stderr[-2000:]
    assert f"benchmarks/{script}: the machine is busy: 1-minute load average 9.00 > 0.5" in run.stderr
    assert (table.read_bytes() if table.exists() else None) == before
    assert not (tmp_path / "out.md").exists()
