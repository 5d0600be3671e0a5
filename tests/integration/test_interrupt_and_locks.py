"""Ctrl-C on a real `hfedmoe run` process: one line saying how to continue, exit code 130, the lock
released and the run resumable. `hfedmoe bench` holds the run lock of its --out like run/resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from hfedmoe.cli.app import app
from hfedmoe.report.metrics import read_metrics

from .conftest import FAST, REPO, TINY

SETS = sum([["--set", s] for s in FAST + ["federation.rounds=30"]], [])


def test_ctrl_c_in_process_prints_the_resume_line_and_exits_130(tmp_path, monkeypatch):
    """KeyboardInterrupt at the end of round 1 (where SIGINT lands in the process below)."""
    from hfedmoe.engines import simulation

    real = simulation.save_checkpoint

    def interrupt_after(root, r, *a, **k):
        real(root, r, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(simulation, "save_checkpoint", interrupt_after)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--config", str(TINY), "--out", str(out), "-q", *SETS])
    assert res.exit_code == 130, res.output
    assert res.stderr.strip() == f"interrupted: the last complete checkpoint is intact; continue with `hfedmoe resume {out}`"
    assert not (out / ".lock").exists() and (out / "checkpoints" / "round_1").is_dir()


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_line_and_exits_130(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", "from hfedmoe.cli import main; main()", "run", "--config", str(TINY),
                          "--out", str(out), "-q", *SETS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if len(read_metrics(out / "metrics.jsonl")) >= 2:  # round 0 and round 1 written
                break
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines == [f"interrupted: the last complete checkpoint is intact; continue with `hfedmoe resume {out}`"]
    assert not (out / ".lock").exists()
    res = CliRunner().invoke(app, ["resume", str(out), "--rounds", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2]


def test_bench_takes_the_run_lock(tmp_path):
    bench = tmp_path / "bench.toml"
    bench.write_text(f'base = "{TINY}"\nmethods = ["hfedmoe"]\nseeds = [0]\n')
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (out / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        res = CliRunner().invoke(app, ["bench", "-c", str(bench), "-o", str(out), "-q"])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert res.exit_code == 2
    assert f"in use by another hfedmoe process (pid {sleeper.pid})" in " ".join(res.output.split())
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
