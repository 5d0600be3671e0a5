"""The bench's lower-is-better scoring (causal-LM perplexity) against hand-computed numbers:
paired CI and verdict direction, rounds to a perplexity target, the sweep's pick; accuracy as before."""

import math

import pytest

from hfedmoe.bench.metric import check_target, metric_for
from hfedmoe.bench.paired import compare
from hfedmoe.bench.report import run_stats
from hfedmoe.errors import HFedMoEError

PPL = metric_for("causal-lm")
ACC = metric_for("classification")


def test_lower_is_better_paired_ci_and_verdict_by_hand():
    # method - ref perplexity per seed: d = (-4, -6, -5): mean -5, sd 1, sem 1/sqrt(3) = 0.57735,
    # t_{0.975, 2} = 4.302653 -> half width 2.48414: CI [-7.48414, -2.51586], all below 0
    mine, ref = {0: 296.0, 1: 290.0, 2: 300.0}, {0: 300.0, 1: 296.0, 2: 305.0}
    got = compare(mine, ref, PPL)
    assert got["n"] == 3 and got["mean"] == pytest.approx(-5.0)
    assert got["lo"] == pytest.approx(-7.48414, abs=1e-4) and got["hi"] == pytest.approx(-2.51586, abs=1e-4)
    assert got["verdict"] == "better"  # lower perplexity than the reference
    assert compare(ref, mine, PPL)["verdict"] == "worse"
    # the same numbers read as accuracy: a negative difference is worse
    assert compare(mine, ref, ACC)["verdict"] == "worse"
    # a CI containing 0 is a tie in both directions; one seed has no verdict
    assert compare({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0}, PPL)["verdict"] == "tie (CI contains 0)"
    assert compare({0: 1.0}, {0: 2.0}, PPL)["verdict"] == "-"
    # only seeds both have are paired
    assert compare({0: 10.0, 1: 12.0, 7: 1.0}, {0: 11.0, 1: 14.0}, PPL)["n"] == 2


def _rows(values, key="test_perplexity"):
    rows = []
    for r, v in enumerate(values):
        rows.append({"round": r, key: v, "test_accuracy": None if key != "test_accuracy" else v,
                     "sim_time_s": 10.0 * r, "wall_time_s": 1.0 * r, "upload_bytes": 0, "download_bytes": 0,
                     "failed_clients": []})
    return rows


def test_rounds_to_a_perplexity_target_means_at_or_below_it():
    rows = _rows([314.0, 301.0, 290.0, 295.0])
    stats = run_stats(rows, 295.0, PPL)
    assert stats["rounds_to_target"] == 2 and stats["time_to_target"] == 20.0  # 290 <= 295; 301 is not
    assert stats["final"] == 295.0 and stats["best"] == 290.0  # best = lowest
    assert run_stats(rows, 301.0, PPL)["rounds_to_target"] == 1  # equality reaches
    assert run_stats(rows, 200.0, PPL)["rounds_to_target"] is None
    assert run_stats(rows, None, PPL)["rounds_to_target"] is None  # no target: not measured
    # classification unchanged: reach = accuracy >= target, best = highest
    acc = run_stats(_rows([0.3, 0.6, 0.5], "test_accuracy"), 0.5)
    assert acc["rounds_to_target"] == 1 and acc["best"] == 0.6 and acc["final"] == 0.5


def test_sweep_pick_and_formatting_follow_the_direction():
    assert PPL.better(280.0, 290.0) and not PPL.better(290.0, 280.0) and not PPL.better(math.nan, 1.0)
    assert ACC.better(0.9, 0.8)
    assert PPL.best([300.0, 280.0, 290.0]) == 280.0 and ACC.best([0.1, 0.3]) == 0.3
    assert PPL.sweep_key == "client_val_perplexity_mean" and ACC.sweep_key == "client_val_accuracy_mean"
    assert PPL.fmt_diff(-4.321) == "-4.32" and ACC.fmt_diff(0.0123) == "+1.2" and PPL.fmt(None) == "-"
    assert PPL.direction == "lower is better"


def test_targets_and_tasks_are_validated():
    assert check_target(PPL, 250, "target_perplexity") == 250.0
    with pytest.raises(HFedMoEError, match=r"target_perplexity: expected a number >= 1 \(a perplexity\), got 0.5"):
        check_target(PPL, 0.5, "target_perplexity")
    with pytest.raises(HFedMoEError, match=r"target_accuracy: expected a number in \(0, 1\], got 70"):
        check_target(ACC, 70, "target_accuracy")
    with pytest.raises(HFedMoEError, match=r"model.task: expected one of classification, causal-lm, got 'seq2seq'"):
        metric_for("seq2seq")


def test_bench_file_picks_the_metric_from_the_task_and_per_dataset_targets(tmp_path):
    from pathlib import Path

    from hfedmoe.bench import load_bench_config

    lm = Path(__file__).resolve().parents[2] / "configs" / "tiny-lm.toml"
    path = tmp_path / "bench-lm.toml"
    body = f'''base = "{lm}"
methods = ["hfedmoe", "random-round", "hfedmoe-token"]
seeds = [0, 1]
target_perplexity = 100
[[datasets]]
name = "a"
[[datasets]]
name = "b"
target_perplexity = {{}}
'''
    path.write_text(body.format(50))
    spec = load_bench_config(path)
    assert [d.metric.key for d in spec.datasets] == ["test_perplexity"] * 2
    assert [d.target for d in spec.datasets] == [100.0, 50.0]
    path.write_text(body.format(0.5))
    with pytest.raises(HFedMoEError, match=r"datasets\[1\].target_perplexity: expected a number >= 1"):
        load_bench_config(path)
    # no perplexity target at all: rounds to target is not measured (accuracy keeps its 0.5 default)
    path.write_text(body.format(50).replace("target_perplexity = 100\n", ""))
    assert [d.target for d in load_bench_config(path).datasets] == [None, 50.0]
