"""federation.select_model = "best-val": the run ends with the evaluated round whose mean client
validation score is best, kept in checkpoints/best; predict/export load it; the report names it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfedmoe.cli.rundir import load_run, run_config
from hfedmoe.cli.summary import write_report
from hfedmoe.config import load_config
from hfedmoe.engines import best as best_mod
from hfedmoe.engines.best import BEST_DIR, BestModel, select_round, selected_summary
from hfedmoe.engines.checkpoint import complete_rounds, load_checkpoint
from hfedmoe.engines.simulation import Simulation
from hfedmoe.errors import HFedMoEError
from hfedmoe.report.metrics import read_metrics
from tests.integration.conftest import FAST, TINY

BEST = FAST + ["federation.select_model=best-val", "federation.rounds=3", "federation.client_eval_every=5"]


def _row(r, acc=None, ppl=None):
    return {"round": r, "client_val_accuracy_pooled": acc, "client_val_perplexity_mean": ppl}


def test_select_round_is_the_best_validation_score_earliest_on_ties_never_test():
    rows = [_row(0, 0.4), _row(1, 0.7), _row(2, None), _row(3, 0.7), _row(4, float("nan"))]
    rows[2]["test_accuracy"] = 0.99  # the test set never chooses
    assert select_round(rows, "classification") == 1
    lm = [_row(0, ppl=30.0), _row(1, ppl=12.5), _row(2, ppl=12.6)]
    assert select_round(lm, "causal-lm") == 1  # lower perplexity is better
    assert select_round([_row(0), _row(1)], "classification") is None
    assert selected_summary([_row(0), _row(1)], "classification") == {}
    rows[1]["test_accuracy"] = 0.61
    s = selected_summary(rows, "classification")
    assert (s["selected_round"], s["selected_val_score"], s["selected_test_accuracy"]) == (1, 0.7, 0.61)


def test_best_model_keeps_one_checkpoint_and_discards_one_ahead_of_the_resumed_round(tmp_path):
    keeper = BestModel(tmp_path, "classification")
    sd = lambda v: {"w": torch.full((2,), float(v))}  # noqa: E731
    assert keeper.offer(0, _row(0, 0.5), sd(0))
    assert not keeper.offer(1, _row(1, 0.5), sd(1))  # a tie keeps the earlier round
    assert keeper.offer(2, _row(2, 0.8), sd(2))
    assert not keeper.offer(3, _row(3, None), sd(3))
    assert complete_rounds(tmp_path / BEST_DIR) == [2]
    assert torch.equal(load_checkpoint(tmp_path / BEST_DIR, 2)[0]["w"], sd(2)["w"])
    rows = [_row(0, 0.5), _row(1, 0.5), _row(2, 0.8)]
    again = BestModel(tmp_path, "classification")
    assert again.restore(rows, 2, sd(2)) is None and (again.round, again.score) == (2, 0.8)
    # resumed at round 1: the kept round 2 is ahead of it (its row was dropped) -> round 1's own model
    again = BestModel(tmp_path, "classification")
    note = again.restore(rows[:2], 1, sd(1))
    assert "after the resumed round 1" in note and complete_rounds(tmp_path / BEST_DIR) == [1]
    assert torch.equal(load_checkpoint(tmp_path / BEST_DIR, 1)[0]["w"], sd(1)["w"])
    assert again.offer(2, _row(2, 0.8), sd(2)) and complete_rounds(tmp_path / BEST_DIR) == [2]


def test_a_run_ends_with_and_exports_the_round_validation_chose(tmp_path):
    out = tmp_path / "run"
    sim = Simulation(load_config(TINY, BEST), out)
    sim.run()
    rows = read_metrics(out / "metrics.jsonl")
    sizes = np.array([len(c.val_idx) for c in sim.fed.clients])
    per_client = np.array([r["client_val_accuracy"] for r in rows], dtype=float)  # every round evaluated clients
    assert per_client.shape == (4, len(sizes)) and sizes.min() > 0
    val = per_client @ sizes / sizes.sum()  # pooled over all validation examples
    np.testing.assert_allclose([r["client_val_accuracy_pooled"] for r in rows], val, rtol=1e-12)
    expected = int(np.argmax(val))  # numpy: the first maximum
    assert complete_rounds(out / "checkpoints" / BEST_DIR) == [expected]
    kept = load_checkpoint(out / "checkpoints" / BEST_DIR, expected)[0]
    assert all(torch.equal(v.cpu(), kept[k]) for k, v in sim.mm.model.state_dict().items())
    run = load_run(out, run_config(out))
    assert run.round == expected
    assert all(torch.equal(v, kept[k]) for k, v in run.model.state_dict().items())
    # a kept model edited by hand is refused in one line, never silently replaced by the last round
    kept_file = out / "checkpoints" / BEST_DIR / f"round_{expected}" / "model.safetensors"
    original = kept_file.read_bytes()
    kept_file.write_bytes(original[:-8] + b"\x00" * 8)
    with pytest.raises(HFedMoEError, match="not usable"):
        load_run(out, run_config(out))
    kept_file.write_bytes(original)
    summary = write_report(sim)
    assert summary["selected_round"] == expected
    assert summary["selected_test_accuracy"] == rows[expected]["test_accuracy"]
    assert f"round {expected}, pooled client validation" in (out / "report.md").read_text()


def test_the_kept_model_can_be_an_early_round_and_resume_keeps_it(tmp_path, monkeypatch):
    # validation made to prefer round 0: the run must end with the untrained model, not the last round's
    monkeypatch.setattr(best_mod, "val_score", lambda row, key: -float(row["round"]))
    out = tmp_path / "run"
    sim = Simulation(load_config(TINY, BEST), out)
    start = {k: v.detach().clone() for k, v in sim.mm.model.state_dict().items()}
    sim.run(2)
    resumed = Simulation(load_config(TINY, BEST), out)
    assert resumed.restore() == 2 and resumed.best.round == 0
    resumed.run()
    assert complete_rounds(out / "checkpoints" / BEST_DIR) == [0]
    last = load_checkpoint(out / "checkpoints", 3)[0]
    end = resumed.mm.model.state_dict()
    assert all(torch.equal(end[k].cpu(), start[k]) for k in start)
    assert any(not torch.equal(last[k], start[k]) for k in start)  # the last round did train


def test_best_val_needs_validation_splits():
    with pytest.raises(HFedMoEError, match=r"data.val_fraction.*best-val.*got 0"):
        load_config(TINY, BEST + ["data.val_fraction=0"])
