"""Paired comparisons over seeds for the bench report: each method against a reference method,
the difference of the final test score (accuracy, or perplexity for a causal LM: the dataset's
:class:`~hfedmoe.bench.metric.BenchMetric`) taken per seed (same partitions, budgets and
profiles), and a 95% Student-t confidence interval over those differences (``scipy.stats.t``),
plus the mean mechanism diagnostics per method and the oracle-vs-random gap. Verdicts read the
metric's direction: a perplexity difference below 0 is "better".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from hfedmoe.bench.metric import BenchMetric, metric_for
from hfedmoe.report.metrics import read_metrics


def paired_ci(a: list[float], b: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b`` (paired) and its two-sided t interval; NaN bounds with fewer than 2 pairs."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.size
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "lo": math.nan, "hi": math.nan}
    sem = float(d.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1)) * sem
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half}


def final_by_seed(out: Path, dataset: str, method: str, seeds: list[int], key: str = "test_accuracy") -> dict[int, float]:
    """seed -> the last evaluated ``key`` of each finished run of ``method``."""
    res = {}
    for s in seeds:
        run = out / "runs" / dataset / method / f"seed{s}"
        if (run / "summary.json").is_file():
            ev = [r for r in read_metrics(run / "metrics.jsonl") if r.get(key) is not None]
            if ev:
                res[s] = float(ev[-1][key])
    return res


def compare(mine: dict[int, float], ref: dict[int, float], metric: BenchMetric) -> dict[str, Any]:
    """``mine - ref`` paired on the seeds both have, its CI and the metric-aware verdict."""
    common = sorted(set(mine) & set(ref))
    ci = paired_ci([mine[s] for s in common], [ref[s] for s in common])
    return {**ci, "verdict": metric.verdict(ci["lo"], ci["hi"], ci["n"])}


def paired_rows(out: Path, dataset: str, methods: list[str], seeds: list[int], reference: str,
                metric: BenchMetric | None = None) -> list[dict[str, Any]]:
    metric = metric or metric_for("classification")
    ref = final_by_seed(out, dataset, reference, seeds, metric.key)
    rows = []
    for m in methods:
        if m == reference:
            continue
        mine = final_by_seed(out, dataset, m, seeds, metric.key)
        rows.append({"method": m, "reference": reference, **compare(mine, ref, metric)})
    return rows


MECH_KEYS = ("mech_sel_disagree_hfedmoe_noib", "mech_sel_disagree_hfedmoe_freq", "mech_ib_scale_ratio",
             "mech_tau_excluded_frac", "mech_alpha_uniform_dev", "mech_alpha_share_l1", "mech_router_top_prob")


def mechanism_rows(out: Path, dataset: str, methods: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Per method, the mean over seeds of the run-level mechanism diagnostics (summary.json)."""
    from hfedmoe.report.mechanisms import mechanism_summary

    rows = []
    for m in methods:
        vals: dict[str, list[float]] = {k: [] for k in MECH_KEYS}
        for s in seeds:
            run = out / "runs" / dataset / m / f"seed{s}"
            if not (run / "summary.json").is_file():
                continue
            summ = json.loads((run / "summary.json").read_text())
            if not any(k in summ for k in MECH_KEYS):  # older summary: recompute from metrics
                summ = mechanism_summary(read_metrics(run / "metrics.jsonl"))
            for k in MECH_KEYS:
                if isinstance(summ.get(k), (int, float)):
                    vals[k].append(float(summ[k]))
        if any(vals.values()):
            rows.append({"method": m, **{k: (float(np.mean(v)) if v else None) for k, v in vals.items()}})
    return rows


def _p(x: float | None, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:+.1f}" if pct else f"{x:.3g}"


def _pc(x: float | None) -> str:
    """A fraction as an unsigned percentage cell."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def render_paired(out: Path, dataset: str, methods: list[str], seeds: list[int],
                  metric: BenchMetric | None = None) -> list[str]:
    """Markdown lines: paired differences vs hfedmoe (and vs fedavg-full where present), the
    oracle - random gap (against each random form present), and the mechanism diagnostics."""
    metric = metric or metric_for("classification")
    md: list[str] = []
    refs = [r for r in ("hfedmoe", "fedavg-full") if r in methods]
    what = f"final {metric.label}, {metric.diff_unit}, {metric.direction}"
    for ref in refs:
        rows = paired_rows(out, dataset, methods, seeds, ref, metric)
        md += [f"### Paired differences vs {ref} ({what}; 95% t-interval over seeds)", "",
               "| method | seeds | method - ref | 95% CI | verdict (method vs ref) |", "|---|---|---|---|---|"]
        for r in rows:
            md.append(f"| {r['method']} | {r['n']} | {metric.fmt_diff(r['mean'])} | "
                      f"[{metric.fmt_diff(r['lo'])}, {metric.fmt_diff(r['hi'])}] | {r['verdict']} |")
        md.append("")
    for random in (r for r in ("random", "random-round") if r in methods and "oracle" in methods):
        gap = paired_rows(out, dataset, ["oracle"], seeds, random, metric)[0]
        can_rank = gap["verdict"] == "better"
        md += [f"### Oracle vs {random} (can this setting rank selection methods?)", "",
               f"oracle - {random}: {metric.fmt_diff(gap['mean'])} {metric.diff_unit} ({metric.direction}), 95% CI "
               f"[{metric.fmt_diff(gap['lo'])}, {metric.fmt_diff(gap['hi'])}] over {gap['n']} seeds: "
               + ("the oracle is clearly better, selection matters here." if can_rank else
                  f"**the oracle is not clearly better than {random}: this setting cannot rank selection methods.**"),
               ""]
    mech = mechanism_rows(out, dataset, methods, seeds)
    if mech:
        md += ["### Mechanism diagnostics (mean over seeds and rounds)", "",
               "| method | IB changes choice | HFedMoE vs freq differ | IB scale std(s_b-I_b)/std(s_b) | tau-excluded pairs | "
               "max abs(alpha-1/C) | L1(alpha, shares) | router top prob r0 |", "|---|---|---|---|---|---|---|---|"]
        for r in mech:
            md.append(
                f"| {r['method']} | {_pc(r['mech_sel_disagree_hfedmoe_noib'])} | "
                f"{_pc(r['mech_sel_disagree_hfedmoe_freq'])} | {_p(r['mech_ib_scale_ratio'], False)} | "
                f"{_pc(r['mech_tau_excluded_frac'])} | {_p(r['mech_alpha_uniform_dev'], False)} | "
                f"{_p(r['mech_alpha_share_l1'], False)} | {_p(r['mech_router_top_prob'], False)} |")
        md.append("")
    return md
