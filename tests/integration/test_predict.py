"""`hfedmoe predict`: labels and probabilities from a run's newest checkpoint; bad input is one line, exit 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hfedmoe.cli.app import app
from hfedmoe.cli.rundir import load_run, run_config
from hfedmoe.config import load_config
from hfedmoe.engines.simulation import Simulation
from tests.integration.conftest import FAST, TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    Simulation(load_config(TINY, FAST + ["federation.rounds=1"]), out).run()
    return out


def invoke(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def test_text_to_stdout_and_file_to_jsonl_match_the_model(run_dir, tmp_path):
    result = invoke("--run", run_dir, "--text", "what a wonderful film")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert len(rows) == 1 and rows[0]["text"] == "what a wonderful film"
    probs = {k[5:]: float(v) for k, v in rows[0].items() if k.startswith("prob_")}
    assert set(probs) == {"negative", "positive"} and abs(sum(probs.values()) - 1) < 1e-5
    assert rows[0]["label"] == max(probs, key=probs.get)
    # independent: the checkpointed model's own forward pass on the same tokens
    cfg = run_config(run_dir)
    run = load_run(run_dir, cfg)
    run.model.eval()
    enc = run.tokenizer(["what a wonderful film"], truncation=True, max_length=cfg.data.max_length, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(run.model(**enc).logits, -1)[0].numpy()
    np.testing.assert_allclose([probs["negative"], probs["positive"]], expected, atol=2e-6)

    src = tmp_path / "in.txt"
    src.write_text("great\n\nawful service\n")
    out = tmp_path / "pred.jsonl"
    result = invoke("--run", run_dir, "--input", src, "--out", out)
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["text"] for x in lines] == ["great", "awful service"]
    table = tmp_path / "in.csv"
    table.write_text("body,id\nnice one,1\nbad one,2\n")
    result = invoke("--run", run_dir, "--input", table, "--text-column", "body", "--out", tmp_path / "p.csv")
    assert result.exit_code == 0 and len((tmp_path / "p.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("args,needle", [
    (["--text", "x", "--input", "in.txt"], "--input/--text: expected exactly one of them, got both"),
    (["--input", "missing.csv"], "--input: expected a readable file"),
    (["--text", "x", "--out", "p.xlsx"], "--out: expected a file ending in .csv or .jsonl"),
    (["--input", "in.csv"], "--text-column: expected a column of in.csv (body), got 'text'"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(run_dir, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("a\n")
    (tmp_path / "in.csv").write_text("body\nhello\n")
    result = invoke("--run", run_dir, *args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr
    assert not (tmp_path / "p.xlsx").exists()


def test_not_a_run_directory(tmp_path):
    result = invoke("--run", tmp_path, "--text", "x")
    assert result.exit_code == 2 and "--run: expected a run directory" in result.stderr
