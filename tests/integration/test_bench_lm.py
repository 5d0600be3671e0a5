"""`hfedmoe bench` on a tiny causal-LM bench file: scored on test perplexity (lower is better),
the sweep minimises mean client VALIDATION perplexity, paired CIs and verdicts read the direction."""

import json
import math
import tomllib

import numpy as np
from scipy import stats
from typer.testing import CliRunner

from hfedmoe.cli import app
from hfedmoe.report.metrics import read_metrics

from .conftest import REPO

runner = CliRunner()
LM = REPO / "configs" / "tiny-lm.toml"
FAST_LM = ["data.max_examples=120", "data.max_clients=2", "train.local_steps=1", "data.heldout=",
           "federation.rounds=1", "data.max_length=24"]


def _final(out, method, seed):
    rows = read_metrics(out / "runs" / "lm" / method / f"seed{seed}" / "metrics.jsonl")
    return [r for r in rows if r.get("test_perplexity") is not None][-1]["test_perplexity"]


def test_causal_lm_bench_scores_perplexity_lower_is_better(tmp_path):
    sets = ", ".join(f'"{s}"' for s in FAST_LM)
    cfg = tmp_path / "bench-lm.toml"
    cfg.write_text(f'''
base = "{LM}"
set = [{sets}]
methods = ["hfedmoe", "random"]
seeds = [0, 1]
target_perplexity = 1e9

[[datasets]]
name = "lm"

[sweep]
methods = ["hfedmoe"]
grid = {{ "train.lr" = [1e-5, 3e-2] }}
''')
    out = tmp_path / "out"
    res = runner.invoke(app, ["bench", "--config", str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "lm / random / seed 1:" in res.output and "test perplexity" in res.output
    md = (out / "report.md").read_text()
    assert "scored on final **test perplexity** (lower is better)" in md
    assert "final test perplexity ↓ (mean ± std)" in md
    assert (out / "lm_perplexity_vs_round.png").is_file() and (out / "lm_perplexity_vs_time.png").is_file()

    # the table's final perplexity: the mean over seeds of each run's last test perplexity
    for m in ("hfedmoe", "random"):
        finals = [_final(out, m, s) for s in (0, 1)]
        row = next(line for line in md.splitlines() if line.startswith(f"| {m} |"))
        assert f"{np.mean(finals):.2f} ± {np.std(finals, ddof=1):.2f}" in row
        assert "0.0 (2/2)" in row  # perplexity <= 1e9 already at round 0

    # paired random - hfedmoe, by hand: lower is better, so CI below 0 = "better"
    d = np.array([_final(out, "random", s) - _final(out, "hfedmoe", s) for s in (0, 1)])
    half = stats.t.ppf(0.975, 1) * d.std(ddof=1) / math.sqrt(2)
    lo, hi = d.mean() - half, d.mean() + half
    verdict = "better" if hi < 0 else "worse" if lo > 0 else "tie (CI contains 0)"
    assert f"| random | 2 | {d.mean():+.2f} | [{lo:+.2f}, {hi:+.2f}] | {verdict} |" in md
    assert "perplexity, lower is better" in md

    # the sweep picks the LOWEST mean client validation perplexity, and the runs use it
    sweep = json.loads((out / "sweep.json").read_text())["lm"]
    assert sweep["score"] == "client_val_perplexity_mean" and sweep["direction"] == "min"
    scores = {t["trial"]["train.lr"]: t["val_score"] for t in sweep["trials"]}
    assert len(scores) == 2 and scores[1e-5] != scores[3e-2]
    best_lr = min(scores, key=scores.get)
    assert sweep["best"]["hfedmoe"] == {"train.lr": best_lr}
    for m in ("hfedmoe", "random"):
        run_cfg = tomllib.loads((out / "runs/lm" / m / "seed0/config.toml").read_text())
        assert (run_cfg["train"]["lr"] == best_lr) == (m == "hfedmoe")  # random: not swept, base lr
