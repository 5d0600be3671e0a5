"""End-to-end runs of the in-process engine on the tiny preset (a few seconds each)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from hfedmoe.cli import app
from hfedmoe.config import load_config
from hfedmoe.engines.checkpoint import complete_rounds
from hfedmoe.engines.simulation import Simulation
from hfedmoe.report.metrics import REQUIRED_KEYS, read_metrics

from .conftest import FAST, TINY

runner = CliRunner()


def _strip_wall(rows):
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]


def test_run_writes_all_outputs(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["run", "--config", str(TINY), "--out", str(out), "-q",
                              *sum([["--set", s] for s in FAST + ["federation.rounds=2"]], [])])
    assert res.exit_code == 0, res.output
    assert res.output == ""  # --quiet prints nothing
    for name in ["config.toml", "metrics.jsonl", "summary.json", "report.md", "accuracy_vs_round.png",
                 "accuracy_vs_time.png", "usage_heatmap.png", "trained_heatmap.png"]:
        assert (out / name).is_file(), name
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert set(REQUIRED_KEYS) <= set(r)
    assert complete_rounds(out / "checkpoints") == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and 0.0 <= summary["final_test_accuracy"] <= 1.0
    # Budgets are respected: no client trained more experts in a batch than its budget allows.
    sim_budgets = [1, 1, 1, 4]
    for r in rows[1:]:
        for cid, counts in r["client_selected_experts"].items():
            steps = 2
            for layer_counts in counts:
                assert sum(layer_counts) <= sim_budgets[int(cid)] * steps


def test_resume_is_bit_identical(tmp_path):
    sets = FAST + ["federation.rounds=4"]
    full = Simulation(load_config(TINY, sets), tmp_path / "full")
    full.run()
    half = Simulation(load_config(TINY, sets), tmp_path / "half")
    half.run(2)
    resumed = Simulation(load_config(TINY, sets), tmp_path / "half")
    assert resumed.restore() == 2
    resumed.run(4)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "round_4" / "model.safetensors"))
    b = load_file(str(tmp_path / "half" / "checkpoints" / "round_4" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _strip_wall(read_metrics(tmp_path / "full" / "metrics.jsonl")) == _strip_wall(
        read_metrics(tmp_path / "half" / "metrics.jsonl"))


def test_resume_cli_after_a_torn_checkpoint(tmp_path):
    out = tmp_path / "run"
    sets = sum([["--set", s] for s in FAST + ["federation.rounds=2"]], [])
    assert runner.invoke(app, ["run", "--config", str(TINY), "--out", str(out), "-q", *sets]).exit_code == 0
    # A kill during the next checkpoint leaves a temporary folder and a torn metrics line.
    (out / "checkpoints" / ".round_3.tmp").mkdir()
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write('{"round": 3, "trunc')
    res = runner.invoke(app, ["resume", str(out), "--rounds", "3", "-q"])
    assert res.exit_code == 0, res.output
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl")] == [0, 1, 2, 3]
    assert complete_rounds(out / "checkpoints")[-1] == 3


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "method.lam=2"], "method.lam: expected a float in [0, 1], got 2.0"),
        (["--set", "data.dataset=local", "--set", "data.path=/nope.csv"], "/nope.csv"),
        (["--config", "/nonexistent.toml"], "--config: file not found"),
        (["--set", "data.partition=natural", "--set", "data.dataset=trec"], "group"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    out = tmp_path / "bad"
    base = [] if "--config" in args else ["--config", str(TINY)]
    res = runner.invoke(app, ["run", *base, "--out", str(out), "-q", *args])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert needle in text
    assert "Traceback" not in res.output
    assert not (out / "metrics.jsonl").exists()  # never a half-written output


def test_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    sets = sum([["--set", s] for s in FAST + ["federation.rounds=1"]], [])
    assert runner.invoke(app, ["run", "--config", str(TINY), "--out", str(out), "-q", *sets]).exit_code == 0
    res = runner.invoke(app, ["run", "--config", str(TINY), "--out", str(out), "-q", *sets])
    assert res.exit_code == 2 and "already holds a run" in res.output


def test_any_supported_hf_moe_checkpoint_runs_by_config(tmp_path):
    """A user's own HF MoE checkpoint (here a tiny Mixtral classifier saved to disk) plugs in by config."""
    from transformers import MixtralForSequenceClassification

    from hfedmoe.assets.models import load_minilm_tokenizer
    from hfedmoe.moe.build import tiny_model

    tok = load_minilm_tokenizer()
    config = tiny_model("mixtral", vocab_size=tok.vocab_size).config
    config.num_labels = 2
    ckpt = tmp_path / "my-moe"
    MixtralForSequenceClassification(config).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    cfg = load_config(TINY, FAST + ["federation.rounds=1", "model.name=hf", f"model.path={ckpt}"])
    sim = Simulation(cfg, tmp_path / "run")
    assert sim.mm.family == "mixtral"
    rows = sim.run()
    assert [r["round"] for r in rows] == [0, 1]
    assert 0.0 <= rows[-1]["test_accuracy"] <= 1.0
    assert any(any(any(c) for c in layer) for layer in rows[-1]["client_trained"].values())


def test_keep_checkpoints_prunes_old_rounds_and_resume_still_works(tmp_path):
    sets = FAST + ["federation.rounds=3", "federation.keep_checkpoints=1"]
    sim = Simulation(load_config(TINY, sets), tmp_path / "run")
    sim.run(2)
    assert complete_rounds(tmp_path / "run" / "checkpoints") == [2]
    again = Simulation(load_config(TINY, sets), tmp_path / "run")
    assert again.restore() == 2
    again.run(3)
    assert complete_rounds(tmp_path / "run" / "checkpoints") == [3]
