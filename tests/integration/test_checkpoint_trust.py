"""Checkpoints are verified, resume falls back to the newest valid round and says so, a run
folder has one writer, --overwrite keeps the old run until the new one has started, and resume
never rewrites a finished run with less. Every resumed run ends bit-identical to an uninterrupted one."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from hfedmoe.cli import app
from hfedmoe.config import load_config
from hfedmoe.engines import checkpoint, simulation
from hfedmoe.engines.checkpoint import complete_rounds
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError
from hfedmoe.report.metrics import read_metrics

from .conftest import FAST, REPO, TINY

runner = CliRunner()
SETS = FAST + ["federation.rounds=3", "federation.keep_checkpoints=0"]  # keep rounds 1..3 to fall back to
CLI_SETS = sum([["--set", s] for s in SETS], [])


def _files(run):
    """Every file under ``run`` with its bytes (what a refused command must leave as it was)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


def _model(run, r=3):
    return load_file(str(run / "checkpoints" / f"round_{r}" / "model.safetensors"))


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 3-round run written by the CLI (config, metrics, report, checkpoints 1..3)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    res = runner.invoke(app, ["run", "--config", str(TINY), "--out", str(out), "-q", *CLI_SETS])
    assert res.exit_code == 0, res.output
    return out


def _copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def _truncate(d):
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(d):
    p = d / "model.safetensors"
    b = bytearray(p.read_bytes())
    b[len(b) - 100] ^= 0x10
    p.write_bytes(bytes(b))


def _empty_state(d):
    (d / "server_state.json").write_text("")


def _invalid_state(d):
    (d / "server_state.json").write_text("{not json")


def _no_sums(d):
    (d / "checksums.json").unlink()


def _rehash(d):
    sums = {n: checkpoint._sha256(d / n) for n in ("model.safetensors", "server_state.json")}
    (d / "checksums.json").write_text(json.dumps(sums))


def _foreign(d):
    """Tensors of another model, with checksums that match them (only the content check can tell)."""
    t = load_file(str(d / "model.safetensors"))
    t = {("other." + k): v for k, v in t.items()}
    save_file(t, str(d / "model.safetensors"))
    _rehash(d)


def _reshaped(d):
    t = load_file(str(d / "model.safetensors"))
    k = sorted(t)[0]
    t[k] = torch.zeros(2, 2)
    save_file(t, str(d / "model.safetensors"))
    _rehash(d)


def _nan_model(d):
    t = load_file(str(d / "model.safetensors"))
    k = next(k for k in sorted(t) if t[k].is_floating_point())
    t[k].view(-1)[0] = float("nan")
    save_file(t, str(d / "model.safetensors"))
    _rehash(d)


def _other_method(d):
    s = json.loads((d / "server_state.json").read_text())
    s["method"] = "fedavg"
    (d / "server_state.json").write_text(json.dumps(s))
    _rehash(d)


CORRUPTIONS = {
    "truncated model": (_truncate, "checksum mismatch"),
    "flipped byte": (_flip, "checksum mismatch"),
    "empty server_state": (_empty_state, "checksum mismatch"),
    "invalid server_state": (_invalid_state, "checksum mismatch"),
    "no checksums": (_no_sums, "checksums.json missing"),
    "foreign tensors": (_foreign, "another model"),
    "reshaped tensor": (_reshaped, "expected"),
    "non-finite model": (_nan_model, "non-finite"),
    "other method's state": (_other_method, "method"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_resume_falls_back_past_a_bad_checkpoint_and_ends_bit_identical(case, finished, tmp_path):
    corrupt, needle = CORRUPTIONS[case]
    run = _copy(finished, tmp_path)
    (run / "report.md").unlink()  # not finished any more from the CLI's view: it must resume
    corrupt(run / "checkpoints" / "round_3")
    before = _files(run)
    res = runner.invoke(app, ["resume", str(run), "-q"])  # without the option: refused, nothing moved
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "checkpoint of round 3 is not usable" in text and needle in text and "--discard-invalid" in text
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert _files(run) == before
    res = runner.invoke(app, ["resume", str(run), "-q", "--discard-invalid"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "checkpoint of round 3 is not usable" in text and needle in text, text
    assert "resuming from round 2" in text
    assert (run / "checkpoints" / "round_3.invalid").is_dir()
    assert complete_rounds(run / "checkpoints") == [1, 2, 3]
    _same(_model(run), _model(finished))
    assert _strip(read_metrics(run / "metrics.jsonl")) == _strip(read_metrics(finished / "metrics.jsonl"))


def test_every_checkpoint_bad_restarts_from_round_0_and_says_so(finished, tmp_path):
    run = _copy(finished, tmp_path)
    for r in (1, 2, 3):
        _flip(run / "checkpoints" / f"round_{r}")
    sim = Simulation(load_config(TINY, SETS), run)
    before = _files(run)
    with pytest.raises(HFedMoEError, match="checkpoint of round 3 is not usable"):
        sim.restore()
    assert _files(run) == before
    assert sim.restore(discard_invalid=True) == 0
    assert "starting again from round 0" in sim.restore_notes[-1]
    sim.run()
    _same(_model(run), _model(finished))


def _edit_config(run, section, key, value):
    import tomllib

    import tomli_w

    data = tomllib.loads((run / "config.toml").read_text())
    data[section][key] = value
    (run / "config.toml").write_text(tomli_w.dumps(data))


CONFIG_EDITS = [
    (("train", "lr", 0.01), "train.lr (0.003 -> 0.01)"),
    (("model", "num_experts", 6), "model.num_experts (4 -> 6)"),
    (("method", "name", "fedavg"), "method.name ('hfedmoe' -> 'fedavg')"),
]  # and the seed, below


@pytest.mark.parametrize("edit, fields", CONFIG_EDITS)
def test_a_hand_edited_config_is_refused_naming_the_fields_and_nothing_moves(edit, fields, finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "report.md").unlink()
    _edit_config(run, *edit)
    before = _files(run)
    res = runner.invoke(app, ["resume", str(run), "-q", "--discard-invalid"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "the config differs from the one the checkpoint was made with" in text and fields in text, text
    assert "nothing was changed" in text and len(res.output.strip().splitlines()) == 1
    assert _files(run) == before  # no checkpoint set aside, no metrics row dropped


def test_a_seed_edit_lists_the_field_and_only_safe_fields_can_be_allowed(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "report.md").unlink()
    data = (run / "config.toml").read_text()
    (run / "config.toml").write_text(data.replace("seed = 0", "seed = 7", 1))
    res = runner.invoke(app, ["resume", str(run), "-q"])
    assert res.exit_code == 2 and "seed (0 -> 7)" in " ".join(res.output.split())
    res = runner.invoke(app, ["resume", str(run), "-q", "--allow-change", "seed"])
    assert res.exit_code == 2 and "--allow-change: expected fields from" in " ".join(res.output.split())


def test_allow_change_extends_the_rounds_of_an_edited_config(finished, tmp_path):
    run = _copy(finished, tmp_path)
    _edit_config(run, "federation", "rounds", 4)
    res = runner.invoke(app, ["resume", str(run), "-q"])
    assert res.exit_code == 2
    assert "--allow-change federation.rounds" in " ".join(res.output.split())
    res = runner.invoke(app, ["resume", str(run), "-q", "--allow-change", "federation.rounds"])
    assert res.exit_code == 0, res.output
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert _strip(rows[:4]) == _strip(read_metrics(finished / "metrics.jsonl"))  # the history kept


def test_keyed_checksums_refuse_a_checkpoint_rewritten_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("HFEDMOE_CHECKPOINT_KEY", "k1")
    sim = Simulation(load_config(TINY, FAST + ["federation.rounds=1"]), tmp_path / "run")
    sim.run()
    d = tmp_path / "run" / "checkpoints" / "round_1"
    sums = json.loads((d / "checksums.json").read_text())
    assert set(sums["hmac-sha256"]) == {"model.safetensors", "server_state.json"}
    checkpoint.load_checkpoint(d.parent, 1)  # verifies with the key
    state = json.loads((d / "server_state.json").read_text())
    state["sim_time_s"] = 0.0  # forged, with plain checksums recomputed: only the HMAC can tell
    (d / "server_state.json").write_text(json.dumps(state))
    _rehash(d)
    sums2 = json.loads((d / "checksums.json").read_text())
    sums2["hmac-sha256"] = sums["hmac-sha256"]
    (d / "checksums.json").write_text(json.dumps(sums2))
    with pytest.raises(checkpoint.CheckpointError, match="hmac-sha256 mismatch"):
        checkpoint.load_checkpoint(d.parent, 1)
    monkeypatch.delenv("HFEDMOE_CHECKPOINT_KEY")
    checkpoint.load_checkpoint(d.parent, 1)  # no key: the plain checksums only
    keyfile = tmp_path / "key"
    keyfile.write_text("k2\n")
    monkeypatch.setenv("HFEDMOE_CHECKPOINT_KEY_FILE", str(keyfile))
    _rehash(d)  # plain sums only: unsigned
    with pytest.raises(checkpoint.CheckpointError, match="no hmac-sha256"):
        checkpoint.load_checkpoint(d.parent, 1)


def test_deleted_metrics_is_an_error_and_the_report_survives(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "metrics.jsonl").unlink()
    (run / "report.md").unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = runner.invoke(app, ["resume", str(run), "-q"])
    assert res.exit_code == 2, res.output
    assert "metric rows for rounds 0..3" in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_below_the_rounds_done_is_exit_2_and_changes_nothing(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = runner.invoke(app, ["resume", str(run), "--rounds", "2", "-q"])
    assert res.exit_code == 2
    assert "--rounds: expected at least 3 (the rounds this run has done), got 2" in " ".join(res.output.split())
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_of_a_finished_run_writes_nothing(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = runner.invoke(app, ["resume", str(run)])
    assert res.exit_code == 0, res.output
    assert "nothing to do" in res.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_live_writer_locks_the_folder_and_a_stale_lock_is_cleared(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "report.md").unlink()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        res = runner.invoke(app, ["resume", str(run), "-q"])
        assert res.exit_code == 2
        assert f"in use by another hfedmoe process (pid {sleeper.pid})" in " ".join(res.output.split())
        res = runner.invoke(app, ["run", "--config", str(TINY), "--out", str(run), "--overwrite", "-q", *CLI_SETS])
        assert res.exit_code == 2 and "in use" in res.output
    finally:
        sleeper.kill()
        sleeper.wait()
    (run / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    res = runner.invoke(app, ["resume", str(run), "-q"])
    assert res.exit_code == 0, res.output
    assert not (run / ".lock").exists()


def test_overwrite_keeps_the_old_run_when_the_new_one_fails_to_start(finished, tmp_path):
    run = _copy(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    res = runner.invoke(app, ["run", "--config", str(TINY), "--out", str(run), "--overwrite", "-q", *CLI_SETS,
                              "--set", "model.name=hf", "--set", f"model.path={not_a_model}"])
    assert res.exit_code == 2, res.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-model", "run"]  # no staging folder left


def test_overwrite_replaces_the_old_run_once_the_new_one_runs(finished, tmp_path):
    run = _copy(finished, tmp_path)
    res = runner.invoke(app, ["run", "--config", str(TINY), "--out", str(run), "--overwrite", "-q", *CLI_SETS,
                              "--set", "federation.rounds=1"])
    assert res.exit_code == 0, res.output
    assert [r["round"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1]
    assert complete_rounds(run / "checkpoints") == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert not (run / ".lock").exists()


class _Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after it runs (no except Exception catches it)."""


KILL_POINTS = ["after metrics row", "inside model write", "after model write", "before rename", "before prune"]
KILL_DELAYS = [4.0, 7.0, 9.0, 11.0, 14.0]  # seconds after the start of a real `hfedmoe run` (SIGKILL)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_forced_kill_points_resume_bit_identical(point, finished, tmp_path, monkeypatch):
    run = tmp_path / "run"
    sim = Simulation(load_config(TINY, SETS), run)
    real_save, real_save_file, real_replace, real_prune = (
        checkpoint.save_checkpoint, checkpoint.save_file, checkpoint.os.replace, checkpoint.prune_checkpoints)

    def boom(*a, **k):
        if sim.round == 2:
            raise _Killed()

    if point == "after metrics row":
        monkeypatch.setattr(simulation, "save_checkpoint",
                            lambda *a, **k: boom() or real_save(*a, **k))
    elif point == "inside model write":
        def partial(tensors, path):
            if sim.round == 2:
                open(path, "wb").write(b"\x00" * 100)
                raise _Killed()
            return real_save_file(tensors, path)
        monkeypatch.setattr(checkpoint, "save_file", partial)
    elif point == "after model write":
        monkeypatch.setattr(checkpoint, "save_file",
                            lambda *a, **k: (real_save_file(*a, **k), boom()))
    elif point == "before rename":
        monkeypatch.setattr(checkpoint.os, "replace", lambda *a, **k: boom() or real_replace(*a, **k))
    else:
        monkeypatch.setattr(simulation, "prune_checkpoints", lambda *a, **k: boom() or real_prune(*a, **k))
    with pytest.raises(_Killed):
        sim.run()
    monkeypatch.undo()
    again = Simulation(load_config(TINY, SETS), run)
    assert again.restore() in (1, 2)
    again.run()
    _same(_model(run), _model(finished))
    assert _strip(read_metrics(run / "metrics.jsonl")) == _strip(read_metrics(finished / "metrics.jsonl"))


@pytest.mark.slow
def test_kill_9_at_random_points_resumes_bit_identical(finished, tmp_path):
    """SIGKILL of a real `hfedmoe run` process at several moments, then `hfedmoe resume`."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-c", "from hfedmoe.cli import main; main()"]
    cmd = [*cli, "run", "--config", str(TINY), "-q", *CLI_SETS]
    for i, delay in enumerate(KILL_DELAYS):
        out = tmp_path / f"k{i}"
        p = subprocess.Popen([*cmd, "--out", str(out)], env=env)
        time.sleep(delay)
        p.kill()
        p.wait()
        if not (out / "config.toml").is_file():
            continue  # killed before the run started: nothing to resume
        res = subprocess.run([*cli, "resume", str(out), "-q"], env=env,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        _same(_model(out), _model(finished))
        assert _strip(read_metrics(out / "metrics.jsonl")) == _strip(read_metrics(finished / "metrics.jsonl"))
