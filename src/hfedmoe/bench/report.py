"""report.md / report.html and plots of a finished (or partial) `hfedmoe bench` output directory."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hfedmoe.bench.metric import BenchMetric, metric_for
from hfedmoe.report.metrics import read_metrics

if TYPE_CHECKING:
    from hfedmoe.bench.spec import BenchConfig

#: what the hyper-parameter sweep maximises for classification (a causal LM minimises mean client
#: validation perplexity: :attr:`hfedmoe.bench.metric.BenchMetric.sweep_key`); never a test score
SWEEP_SCORE = "client_val_accuracy_mean"


def _eval_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get(key) is not None]


def run_stats(rows: list[dict[str, Any]], target: float | None, metric: BenchMetric | None = None) -> dict[str, Any]:
    """The table's numbers for one run's metrics rows (``metric``: default test accuracy;
    ``target`` None: rounds-to-target not measured)."""
    metric = metric or metric_for("classification")
    key = metric.key
    ev = _eval_rows(rows, key)
    trained = [r for r in rows if r["round"] > 0]
    reach = None if target is None else next((r for r in ev if metric.reached(r[key], target)), None)
    bwd = [r["backward_flops_per_client"] for r in trained if r.get("backward_flops_per_client")]
    return {
        "final": ev[-1][key] if ev else math.nan,
        "best": metric.best([r[key] for r in ev]),
        "rounds_to_target": reach["round"] if reach else None,
        "time_to_target": reach["sim_time_s"] if reach else None,
        "upload": float(np.mean([r["upload_bytes"] for r in trained])) if trained else 0.0,
        "download": float(np.mean([r["download_bytes"] for r in trained])) if trained else 0.0,
        "failed": sum(len(r["failed_clients"]) for r in rows),
        "dropped": sum(len(r.get("dropped_clients", [])) for r in rows),
        "backward_flops": float(np.mean(bwd)) if bwd else 0.0,
        "wall": rows[-1]["wall_time_s"] if rows else 0.0,
        "sim_time": rows[-1]["sim_time_s"] if rows else 0.0,
    }


def _mean_curve(runs: list[list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Per round, mean ``key`` and simulated time over seeds (rounds every seed evaluated)."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for rows in runs:
        for r in _eval_rows(rows, key):
            by_round.setdefault(r["round"], []).append(r)
    return [{"round": k, key: float(np.mean([r[key] for r in v])),
             "sim_time_s": float(np.mean([r["sim_time_s"] for r in v]))}
            for k, v in sorted(by_round.items()) if len(v) == len(runs)]


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _std(x: float, metric: BenchMetric) -> str:
    return _pct(x) if metric.percent else metric.fmt(x)


def _target_text(d: Any) -> str:
    if d.target is None:
        return f"no {d.metric.target_field} set: rounds to target not measured"
    sign = ">=" if d.metric.higher_is_better else "<="
    return f"target: {d.metric.label} {sign} {d.metric.fmt(d.target)}{d.metric.unit}"


def _mb(x: float) -> str:
    return f"{x / 1e6:.2f}"


def collect(bench: BenchConfig, out: Path) -> dict[str, dict[str, Any]]:
    """dataset -> {"rows": table rows, "curves": method -> mean curve, "clients": ...} from disk."""
    result: dict[str, dict[str, Any]] = {}
    for d in bench.datasets:
        table, curves, clients = [], {}, None
        for m in bench.methods:
            runs, stats = [], []
            for s in bench.seeds:
                run_dir = out / "runs" / d.name / m / f"seed{s}"
                if not (run_dir / "summary.json").is_file():
                    continue
                rows = read_metrics(run_dir / "metrics.jsonl")
                runs.append(rows)
                stats.append(run_stats(rows, d.target, d.metric))
                if clients is None and m != "centralized":
                    clients = json.loads((run_dir / "summary.json").read_text()).get("clients")
            if not stats:
                continue
            finals = np.array([s["final"] for s in stats])
            reached = [s for s in stats if s["rounds_to_target"] is not None]
            table.append({
                "method": m,
                "seeds": len(stats),
                "final_mean": float(finals.mean()),
                "final_std": float(finals.std(ddof=1)) if len(finals) > 1 else 0.0,
                "best": float(np.mean([s["best"] for s in stats])),
                "reached": len(reached),
                "rounds_to_target": float(np.mean([s["rounds_to_target"] for s in reached])) if reached else None,
                "time_to_target": float(np.mean([s["time_to_target"] for s in reached])) if reached else None,
                **{k: float(np.mean([s[k] for s in stats]))
                   for k in ("upload", "download", "failed", "dropped", "backward_flops", "wall", "sim_time")},
            })
            curves[m] = _mean_curve(runs, d.metric.key)
        result[d.name] = {"rows": table, "curves": curves, "clients": clients}
    return result


COLUMNS = ["method", "final test acc % (mean ± std)", "best acc %", "rounds to target", "sim time to target (s)",
           "upload MB/round", "download MB/round", "failed client-rounds", "dropped client-rounds",
           "backward GFLOPs/client-round", "wall time (s)"]


def columns(metric: BenchMetric) -> list[str]:
    """The table header: :data:`COLUMNS` for accuracy; the metric's name and direction otherwise."""
    if metric.percent:
        return COLUMNS
    arrow = "↑" if metric.higher_is_better else "↓"
    return ["method", f"final {metric.label} {arrow} (mean ± std)", f"best {metric.label.split()[-1]} {arrow}",
            *COLUMNS[3:]]


def _table_cells(r: dict[str, Any], metric: BenchMetric) -> list[str]:
    reach = f"{r['rounds_to_target']:.1f} ({r['reached']}/{r['seeds']})" if r["rounds_to_target"] is not None \
        else f"- (0/{r['seeds']})"
    ttt = f"{r['time_to_target']:.1f}" if r["time_to_target"] is not None else "-"
    return [r["method"], f"{metric.fmt(r['final_mean'])} ± {_std(r['final_std'], metric)}", metric.fmt(r["best"]),
            reach, ttt,
            _mb(r["upload"]), _mb(r["download"]), f"{r['failed']:.1f}", f"{r['dropped']:.1f}",
            f"{r['backward_flops'] / 1e9:.2f}", f"{r['wall']:.0f}"]


def write_bench_report(bench: BenchConfig, out: Path, sweeps: dict[str, dict[str, Any]]) -> Path:
    """report.md, report.html and per-dataset PNGs in ``out``."""
    from hfedmoe.report.plots import plot_metric

    data = collect(bench, out)
    mode = "quick" if bench.quick else "full"
    md = [f"# hfedmoe bench: {bench.path.name} ({mode})", "",
          f"- methods: {', '.join(bench.methods)}; seeds: {bench.seeds}",
          f"- overrides for every run: {', '.join(bench.overrides) or '-'}",
          "- every method of a dataset runs on identical partitions, budgets and device profiles (same config "
          "and seed; only method.name differs, plus its tuned knobs)",
          "- 'rounds / sim time to target': mean over the seeds that reached it (reached/seeds); failed = clients "
          "whose training state did not fit their memory (fedavg); dropped = skipped up front (fedavg-drop)", ""]
    md += [f"- {n}" for n in bench.notes]
    body_html: list[str] = []
    for d in bench.datasets:
        info = data[d.name]
        metric = d.metric
        md += [f"## {d.name}", "", f"dataset overrides: {', '.join(d.overrides) or '-'}", "",
               f"scored on final **{metric.label}** ({metric.direction}); {_target_text(d)}", ""]
        body_html.append(f"<h2>{html.escape(d.name)}</h2><p>dataset overrides: "
                         f"{html.escape(', '.join(d.overrides) or '-')}</p><p>scored on final "
                         f"{html.escape(metric.label)} ({metric.direction}); {html.escape(_target_text(d))}</p>")
        if info["clients"]:
            desc = ", ".join(f"{c['profile']}: budget {c['budget']}{'' if not c['fits_full'] else ' (fits full)'}"
                             for c in info["clients"])
            md += [f"clients (profile: experts per layer): {desc}", ""]
            body_html.append(f"<p>clients: {html.escape(desc)}</p>")
        cols = columns(metric)
        md += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        rows_html = ["<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
        for r in info["rows"]:
            cells = _table_cells(r, metric)
            md.append("| " + " | ".join(cells) + " |")
            rows_html.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
        md.append("")
        body_html.append("<table>" + "".join(rows_html) + "</table>")
        for x, label in (("round", "round"), ("sim_time_s", "time")):
            name = f"{d.name}_{metric.key.removeprefix('test_')}_vs_{label}.png"
            plot_metric(info["curves"], out / name, key=metric.key, x=x,
                        ylabel=f"{metric.label} ({metric.direction})",
                        title=f"{d.name}: {metric.label} (mean over seeds; {metric.direction})")
            md.append(f"![{name}]({name})")
            body_html.append(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">')
        md.append("")
        from hfedmoe.bench.paired import render_paired

        md += render_paired(out, d.name, bench.methods, bench.seeds, metric)
        sw = sweeps.get(d.name)
        md += ["### Hyper-parameter sweep", ""]
        if not sw:
            note = ("skipped (--quick): the base config's values are used" if bench.quick and bench.sweep is None
                    else "not configured: the base config's values are used")
            md += [note, ""]
            body_html.append(f"<h3>Hyper-parameter sweep</h3><p>{html.escape(note)}</p>")
        else:
            best_word = "highest" if metric.higher_is_better else "lowest"
            val_head = f"val {metric.label.split()[-1]}{' %' if metric.percent else ''}"
            md += [f"score: final mean client **validation** {metric.label.split()[-1]}, {best_word} wins "
                   f"({metric.sweep_key}; the test set is never "
                   f"used), seed {bench.sweep.seed if bench.sweep else '-'}, overrides "
                   f"{', '.join(bench.sweep.overrides) if bench.sweep else '-'}; every swept method gets the same "
                   "number of trials (the common grid, e.g. the learning rate, crossed with its own knobs and "
                   "sampled down to `trials_per_method`); ablations use their family's best values (except the "
                   "knob they fix); methods not in the sweep run with the base config's values", "",
                   f"| method | trial | {val_head} | chosen |", "|---|---|---|---|"]
            sw_html = [f"<tr><th>method</th><th>trial</th><th>{html.escape(val_head)}</th><th>chosen</th></tr>"]
            for t in sw["trials"]:
                chosen = "yes" if sw["best"].get(t["method"]) == t["trial"] else ""
                trial = ", ".join(f"{k}={v}" for k, v in t["trial"].items())
                score = metric.fmt(t.get("val_score", t.get("val_accuracy")))  # older sweep.json: val_accuracy
                md.append(f"| {t['method']} | {trial} | {score} | {chosen} |")
                sw_html.append(f"<tr><td>{html.escape(t['method'])}</td><td>{html.escape(trial)}</td>"
                               f"<td>{score}</td><td>{chosen}</td></tr>")
            md.append("")
            body_html.append("<h3>Hyper-parameter sweep</h3><table>" + "".join(sw_html) + "</table>")
    md_text = "\n".join(md) + "\n"
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>hfedmoe bench</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:48%}</style></head><body>"
            f"<h1>hfedmoe bench: {html.escape(bench.path.name)} ({mode})</h1>"
            + "".join(f"<p>{html.escape(line[2:])}</p>" for line in md[2:] if line.startswith("- "))
            + "".join(body_html) + "</body></html>\n")
    for name, text in (("report.md", md_text), ("report.html", page)):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return out / "report.md"
