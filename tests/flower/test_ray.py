"""The Simulation Engine for real: `hfedmoe run --set engine.name=flower-sim` (flwr run_simulation,
Ray backend) writes the same outputs as the in-process engine, bit-identical weights and metrics,
and resumes. Slow (Ray start-up, ~30-60 s on a loaded 2-core machine)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.flower.conftest import FAST, REPO, TINY
from tests.flower.test_engine import assert_same_run, rows

pytestmark = pytest.mark.slow


def hfedmoe(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "hfedmoe.cli.app", *args], env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def sets(*extra: str) -> list[str]:
    return [x for s in (*FAST, *extra) for x in ("--set", s)]


def test_flower_sim_cli_matches_in_process_and_resumes(tmp_path):
    a = hfedmoe("run", "--config", str(TINY), "--out", str(tmp_path / "sim"), "--quiet", *sets())
    assert a.returncode == 0, a.stderr[-2000:]
    b = hfedmoe("run", "--config", str(TINY), "--out", str(tmp_path / "fs"), "--quiet",
                *sets("engine.name=flower-sim", "federation.rounds=1"))
    assert b.returncode == 0, b.stderr[-2000:]
    c = hfedmoe("resume", str(tmp_path / "fs"), "--rounds", "2", "--quiet")
    assert c.returncode == 0, c.stderr[-2000:]
    for name in ("metrics.jsonl", "report.md", "summary.json", "accuracy_vs_round.png", "config.toml"):
        assert (tmp_path / "fs" / name).is_file(), name
    assert_same_run(tmp_path / "sim", tmp_path / "fs")
    assert all("wire_upload_bytes" in r for r in rows(tmp_path / "fs")[1:])
