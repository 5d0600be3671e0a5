"""The Simulation Engine for real: `hfedmoe run --set engine.name=flower-sim` (`flwr run` on a local
simulation connection, a background SuperLink, Ray) writes the same outputs as the in-process
engine, bit-identical weights and metrics, resumes (also after Ctrl-C), and leaves no process
behind. Slow (SuperLink and Ray start-up, ~30-60 s a run on a loaded 2-core machine)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.flower.conftest import FAST, REPO, TINY, marked
from tests.flower.test_engine import assert_same_run, rows

pytestmark = pytest.mark.slow


def env(mark: str = "") -> dict[str, str]:
    # HFEDMOE_TEST_MARK: every process the run starts inherits it (Flower's detached SuperLink too)
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0",
            "HFEDMOE_TEST_MARK": mark}


def hfedmoe(*args: str, mark: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hfedmoe.cli.app", *args], env=env(mark), capture_output=True,
                          text=True, timeout=600, check=False)


def sets(*extra: str) -> list[str]:
    return [x for s in (*FAST, *extra) for x in ("--set", s)]


def test_flower_sim_cli_matches_in_process_and_resumes(tmp_path):
    a = hfedmoe("run", "--config", str(TINY), "--out", str(tmp_path / "sim"), "--quiet", *sets())
    assert a.returncode == 0, a.stderr[-2000:]
    mark = uuid.uuid4().hex
    b = hfedmoe("run", "--config", str(TINY), "--out", str(tmp_path / "fs"), "--quiet",
                *sets("engine.name=flower-sim", "federation.rounds=1"), mark=mark)
    assert b.returncode == 0, b.stderr[-2000:]
    assert not marked(mark), "processes left running"
    c = hfedmoe("resume", str(tmp_path / "fs"), "--rounds", "2", "--quiet")
    assert c.returncode == 0, c.stderr[-2000:]
    for name in ("metrics.jsonl", "report.md", "summary.json", "accuracy_vs_round.png", "config.toml"):
        assert (tmp_path / "fs" / name).is_file(), name
    assert not (tmp_path / "fs" / "flower-sim.log").exists()  # written only when a run fails
    assert_same_run(tmp_path / "sim", tmp_path / "fs")
    assert all("wire_upload_bytes" in r for r in rows(tmp_path / "fs")[1:])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_stops_every_flower_process_and_the_run_resumes_bit_identical(tmp_path, sig):
    a = hfedmoe("run", "--config", str(TINY), "--out", str(tmp_path / "sim"), "--quiet", *sets())
    assert a.returncode == 0, a.stderr[-2000:]
    mark = uuid.uuid4().hex
    out = tmp_path / "fs"
    proc = subprocess.Popen([sys.executable, "-m", "hfedmoe.cli.app", "run", "--config", str(TINY), "--out", str(out),
                             *sets("engine.name=flower-sim", "federation.rounds=3")], env=env(mark),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 400
    while not (out / "checkpoints" / "round_1").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert len(marked(mark)) > 3  # the CLI, flwr run, the SuperLink, the ServerApp, Ray ...
    proc.send_signal(sig)  # Ctrl-C; SIGTERM counts as Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "hfedmoe resume" in err
    assert not marked(mark), "processes left running after Ctrl-C"
    c = hfedmoe("resume", str(out), "--rounds", "2", "--quiet")
    assert c.returncode == 0, c.stderr[-2000:]
    assert_same_run(tmp_path / "sim", out)
