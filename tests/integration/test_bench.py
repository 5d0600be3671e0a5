"""`hfedmoe bench --quick` on a tiny bench file: report files, resumability, bad configs."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hfedmoe.cli import app
from hfedmoe.report.metrics import read_metrics

from .conftest import FAST, TINY



runner = CliRunner()


def _bench_file(tmp_path, extra=""):
    sets = ", ".join(f'"{s}"' for s in FAST + ["federation.rounds=1"])
    path = tmp_path / "bench-tiny.toml"
    path.write_text(f'''
base = "{TINY}"
set = [{sets}]
methods = ["hfedmoe", "fedavg", "random"]
seeds = [0, 1]
target_accuracy = 0.4

[[datasets]]
name = "vader-natural"
set = ["data.partition=natural"]

[quick]
methods = ["hfedmoe", "fedavg"]
seeds = [0]
sweep = false

[sweep]
grid = {{ "method.lam" = [0.3, 0.7] }}
{extra}''')
    return path


def test_bench_quick_writes_reports_and_resumes(tmp_path):
    cfg, out = _bench_file(tmp_path), tmp_path / "out"
    res = runner.invoke(app, ["bench", "--config", str(cfg), "--out", str(out), "--quick", "-q"])
    assert res.exit_code == 0, res.output
    assert res.output == ""
    for name in ["report.md", "report.html", "vader-natural_accuracy_vs_round.png",
                 "vader-natural_accuracy_vs_time.png"]:
        assert (out / name).is_file(), name
    runs = sorted(p.parent.relative_to(out).as_posix() for p in out.glob("runs/*/*/*/summary.json"))
    assert runs == ["runs/vader-natural/fedavg/seed0", "runs/vader-natural/hfedmoe/seed0"]
    md = (out / "report.md").read_text()
    assert "| hfedmoe |" in md and "| fedavg |" in md and "skipped (--quick)" in md
    assert "<table>" in (out / "report.html").read_text()
    # identical partitions and budgets: same clients for both methods
    a = json.loads((out / "runs/vader-natural/hfedmoe/seed0/summary.json").read_text())["clients"]
    b = json.loads((out / "runs/vader-natural/fedavg/seed0/summary.json").read_text())["clients"]
    assert a == b

    # A crash mid-run: drop fedavg's summary and its last checkpoint -> it resumes, hfedmoe is skipped.
    done = out / "runs/vader-natural/fedavg/seed0"
    (done / "summary.json").unlink()
    mtime = (out / "runs/vader-natural/hfedmoe/seed0/metrics.jsonl").stat().st_mtime_ns
    res = runner.invoke(app, ["bench", "--config", str(cfg), "--out", str(out), "--quick"])
    assert res.exit_code == 0, res.output
    assert "hfedmoe / seed 0: skipped (finished)" in res.output
    assert "fedavg / seed 0: skipped" not in res.output
    assert (out / "runs/vader-natural/hfedmoe/seed0/metrics.jsonl").stat().st_mtime_ns == mtime
    assert [r["round"] for r in read_metrics(done / "metrics.jsonl")] == [0, 1]


def test_bench_bad_config_is_one_line_exit_2(tmp_path):
    cfg = _bench_file(tmp_path)
    cfg.write_text("bogus = 1\n" + cfg.read_text())
    res = runner.invoke(app, ["bench", "--config", str(cfg), "--out", str(tmp_path / "o"), "--quick", "-q"])
    assert res.exit_code == 2 and "unknown keys" in res.output and "Traceback" not in res.output
    cfg.write_text(cfg.read_text().replace('bogus = 1\n', '').replace('"random"]', '"nope"]'))
    res = runner.invoke(app, ["bench", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "methods" in res.output
    # a kept best-val round would score methods at different rounds: refused before anything runs
    res = runner.invoke(app, ["bench", "--config", str(_bench_file(tmp_path)), "--out", str(tmp_path / "o2"),
                              "--set", "federation.select_model=best-val", "-q"])
    assert res.exit_code == 2 and "federation.select_model: expected 'last'" in res.output
    assert "got 'best-val'" in res.output and not (tmp_path / "o2" / "runs").exists()


def test_command_line_sets_and_seeds_reach_every_run_and_the_notes(tmp_path):
    from hfedmoe.bench import load_bench_config, run_config

    spec = load_bench_config(_bench_file(tmp_path), quick=True, extra_sets=["method.beta=0.3"], seeds_override=[4, 5])
    assert spec.seeds == [4, 5]  # replaces the [quick] seeds too
    cfg = run_config(spec, spec.datasets[0], "hfedmoe", 4)
    assert cfg.method.beta == 0.3 and cfg.seed == 4
    assert any("--set method.beta=0.3" in n and "--seeds 4,5" in n for n in spec.notes)
    res = runner.invoke(app, ["bench", "--config", str(_bench_file(tmp_path)), "--out", str(tmp_path / "o"),
                              "--seeds", "1,x", "-q"])
    assert res.exit_code == 2 and "--seeds: expected comma-separated integers" in res.output


def test_parallel_workers_give_the_same_runs_as_sequential(tmp_path):
    """--workers 2 runs the quick bench in two processes: every run's metrics equal the sequential
    ones (each run is deterministic given its config), the report lists the same runs."""
    cfg = _bench_file(tmp_path)
    outs = {}
    for w in (1, 2):
        outs[w] = tmp_path / f"w{w}"
        res = runner.invoke(app, ["bench", "--config", str(cfg), "--out", str(outs[w]), "--quick", "-q",
                                  "--workers", str(w)])
        assert res.exit_code == 0, res.output
    for run in ["hfedmoe/seed0", "fedavg/seed0"]:
        a = read_metrics(outs[1] / "runs/vader-natural" / run / "metrics.jsonl")
        b = read_metrics(outs[2] / "runs/vader-natural" / run / "metrics.jsonl")
        drop = {"wall_time_s", "round_wall_s", "client_wall_s", "wall_s"}
        strip = [[{k: v for k, v in r.items() if "wall" not in k and k not in drop} for r in m] for m in (a, b)]
        assert strip[0] == strip[1]
    res = runner.invoke(app, ["bench", "--config", str(cfg), "--out", str(tmp_path / "o"), "--workers", "0", "-q"])
    assert res.exit_code == 2 and "workers: expected an integer in [1, 256], got 0" in res.output


def test_shipped_bench_files_are_valid_and_fair():
    """Every configs/bench-*.toml validates (every run and trial config), has >= 5 evaluation seeds,
    a held-out sweep seed, and gives every swept method the same number of trials with the
    learning rate tuned for each (issue 8: the same tuning budget, lr included, for every method)."""
    from pathlib import Path

    from hfedmoe.bench import load_bench_config

    files = sorted(Path(__file__).resolve().parents[2].glob("configs/bench-*.toml"))
    assert len(files) >= 4
    for f in files:
        spec = load_bench_config(f)
        assert len(spec.seeds) >= 5, f
        assert spec.sweep is not None and spec.sweep.seed not in spec.seeds, f
        counts = {m: len(spec.sweep.trials(m)) for m in spec.sweep.methods}
        assert len(set(counts.values())) == 1, (f, counts)
        for m in spec.sweep.methods:
            lrs = {t["train.lr"] for t in spec.sweep.trials(m)}
            assert len(lrs) >= 2, (f, m, lrs)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()  # exited, not yet reaped by its new parent
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
def test_a_worker_exits_when_the_bench_process_is_killed():
    """SIGKILL (or SIGTERM) of the bench process runs no cleanup: its spawned workers must notice
    and stop instead of training orphaned runs."""
    script = (
        "import multiprocessing as mp, os, sys, time\n"
        "from hfedmoe.bench.harness import _exit_with\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=_exit_with, args=(os.getpid(), 0.1))\n"
        "    p.start(); print(p.pid, flush=True); time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.5)
    assert not _gone(child)  # alive while the bench process lives
    parent.kill()
    parent.wait()
    # the spawned child may still be importing (torch) when the parent dies: on a loaded machine that
    # alone took over 10 s, so the deadline covers the import and then the 0.1 s poll
    deadline = time.monotonic() + 60
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(child)
