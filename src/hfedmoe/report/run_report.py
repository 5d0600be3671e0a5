"""summary.json, plots and report.md for one run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hfedmoe.report.metrics import read_metrics
from hfedmoe.report.plots import plot_accuracy, plot_heatmaps


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ev = [r for r in rows if r.get("test_accuracy") is not None]
    last = ev[-1] if ev else {}
    first = ev[0] if ev else {}
    trained_rounds = [r for r in rows if r["round"] > 0]
    return {
        "method": rows[-1]["method"] if rows else None,
        "rounds": max((r["round"] for r in rows), default=0),
        "initial_test_accuracy": first.get("test_accuracy"),
        "final_test_accuracy": last.get("test_accuracy"),
        "final_test_loss": last.get("test_loss"),
        "best_test_accuracy": max((r["test_accuracy"] for r in ev), default=None),
        "final_client_val_accuracy_min": last.get("client_val_accuracy_min"),
        "final_client_val_accuracy_mean": last.get("client_val_accuracy_mean"),
        "sim_time_s": rows[-1]["sim_time_s"] if rows else 0.0,
        "wall_time_s": rows[-1]["wall_time_s"] if rows else 0.0,
        "upload_bytes_per_round": (sum(r["upload_bytes"] for r in trained_rounds) / len(trained_rounds))
        if trained_rounds else 0,
        "download_bytes_per_round": (sum(r["download_bytes"] for r in trained_rounds) / len(trained_rounds))
        if trained_rounds else 0,
        "failed_client_rounds": sum(len(r["failed_clients"]) for r in rows),
        **_lm_summary(rows),
    }


def _lm_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Causal LM: perplexities of the first and last evaluated rounds (empty for classification)."""
    ev = [r for r in rows if r.get("test_perplexity") is not None]
    if not ev:
        return {}
    out: dict[str, Any] = {}
    for key in ("test_perplexity", "heldout_perplexity", "client_val_perplexity"):
        out[f"initial_{key}"], out[f"final_{key}"] = ev[0].get(key), ev[-1].get(key)
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_run_report(out_dir: Path, context: dict[str, Any]) -> dict[str, Any]:
    """Write summary.json, PNG plots and report.md from ``out_dir/metrics.jsonl``.

    ``context`` carries what the metrics do not: model and dataset descriptions, clients with
    their profiles, budgets and sizes, the majority-class rate.
    """
    rows = read_metrics(out_dir / "metrics.jsonl")
    summary = {**summarize(rows), **{k: v for k, v in context.items() if k != "clients"}}
    _atomic_write(out_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    label = summary["method"] or "run"
    plots = {
        "accuracy_vs_round.png": plot_accuracy({label: rows}, out_dir / "accuracy_vs_round.png", x="round"),
        "accuracy_vs_time.png": plot_accuracy({label: rows}, out_dir / "accuracy_vs_time.png", x="sim_time_s"),
    }
    clients = context.get("clients", [])
    n = len(clients)
    labels = [f"{c['client_id']} {c['profile']} b={c['budget']}" for c in clients]
    plots["usage_heatmap.png"] = plot_heatmaps(rows, n, out_dir / "usage_heatmap.png", key="client_usage",
                                               title="expert usage u_c(e) per client (mean over rounds)",
                                               client_labels=labels)
    plots["trained_heatmap.png"] = plot_heatmaps(rows, n, out_dir / "trained_heatmap.png", key="client_trained",
                                                 title="fraction of rounds each client trained each expert",
                                                 client_labels=labels)
    _atomic_write(out_dir / "report.md", render_markdown(rows, summary, clients, plots))
    return summary


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if pct:
        return f"{100 * x:.1f}%"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def render_markdown(rows: list[dict[str, Any]], summary: dict[str, Any], clients: list[dict[str, Any]],
                    plots: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"# hfedmoe run: {s.get('method')}",
        "",
        f"- model: {s.get('model', '-')}",
        f"- data: {s.get('dataset', '-')}",
        f"- rounds: {s['rounds']}, simulated time {s['sim_time_s']:.1f} s, wall time {s['wall_time_s']:.1f} s",
        f"- test accuracy: round 0 {_fmt(s['initial_test_accuracy'], True)} -> final "
        f"{_fmt(s['final_test_accuracy'], True)} (best {_fmt(s['best_test_accuracy'], True)}); "
        f"majority-class rate {_fmt(s.get('majority_rate'), True)}",
        f"- per-client validation accuracy of the final global model: min "
        f"{_fmt(s['final_client_val_accuracy_min'], True)}, mean {_fmt(s['final_client_val_accuracy_mean'], True)}",
        *([f"- perplexity (causal LM): test {_fmt(s['initial_test_perplexity'])} -> {_fmt(s['final_test_perplexity'])}; "
           f"held-out {_fmt(s.get('initial_heldout_perplexity'))} -> {_fmt(s.get('final_heldout_perplexity'))}; "
           "per client (round 0 -> final): " + ", ".join(
               f"{_fmt(a)} -> {_fmt(b)}" for a, b in zip(s['initial_client_val_perplexity'], s['final_client_val_perplexity']))]
          if s.get("initial_test_perplexity") is not None else []),
        f"- failed client-rounds: {s['failed_client_rounds']}; upload {s['upload_bytes_per_round'] / 1e6:.2f} MB "
        f"and download {s['download_bytes_per_round'] / 1e6:.2f} MB per round",
        "",
    ]
    if clients:
        lines += ["## Clients", "", "| client | profile | train | val | expert budget | fits full training |",
                  "|---|---|---|---|---|---|"]
        for c in clients:
            lines.append(f"| {c['client_id']} | {c['profile']} | {c['num_train']} | {c['num_val']} | "
                         f"{c['budget']} | {'yes' if c['fits_full'] else 'no'} |")
        lines.append("")
    lines += ["## Rounds", "", "| round | test acc | test loss | train loss | sim time (s) | failed |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round']} | {_fmt(r.get('test_accuracy'), True)} | {_fmt(r.get('test_loss'))} | "
                     f"{_fmt(r.get('train_loss'))} | {r['sim_time_s']:.1f} | {len(r['failed_clients'])} |")
    lines.append("")
    lines += ["## Plots", ""]
    for name, path in plots.items():
        if path is not None:
            lines.append(f"![{name}]({name})")
    lines.append("")
    return "\n".join(lines)
