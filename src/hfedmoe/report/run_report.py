"""summary.json, plots and report.md for one run directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hfedmoe.report.advice import drift_warnings, plural
from hfedmoe.report.classes import human_duration, learning_warnings
from hfedmoe.report.metrics import read_metrics
from hfedmoe.report.mechanisms import mechanism_summary, render_mechanisms
from hfedmoe.report.plots import plot_accuracy, plot_heatmaps, plot_perplexity

#: The clients table lists every client up to this many; beyond, the largest ones plus aggregates.
MAX_CLIENT_ROWS = 30


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
        "final_test_macro_f1": last.get("test_macro_f1"),
        "final_test_class_accuracy": last.get("test_class_accuracy"),
        "final_test_pred_share": last.get("test_pred_share"),
        "best_test_accuracy": max((r["test_accuracy"] for r in ev), default=None),
        "final_client_val_accuracy_min": last.get("client_val_accuracy_min"),
        "final_client_val_accuracy_mean": last.get("client_val_accuracy_mean"),
        "sim_time_s": rows[-1]["sim_time_s"] if rows else 0.0,
        "sim_compute_time_s": rows[-1].get("sim_compute_time_s", 0.0) if rows else 0.0,
        "sim_comm_time_s": rows[-1].get("sim_comm_time_s", 0.0) if rows else 0.0,
        "wall_time_s": rows[-1]["wall_time_s"] if rows else 0.0,
        "upload_bytes_per_round": (sum(r["upload_bytes"] for r in trained_rounds) / len(trained_rounds))
        if trained_rounds else 0,
        "download_bytes_per_round": (sum(r["download_bytes"] for r in trained_rounds) / len(trained_rounds))
        if trained_rounds else 0,
        "failed_client_rounds": sum(len(r["failed_clients"]) for r in rows),
        "rejected_client_rounds": sum(len(r.get("rejected_clients") or {}) for r in rows),
        "dp_epsilon": rows[-1].get("dp_epsilon") if rows else None,
        "dp_delta": rows[-1].get("dp_delta") if rows else None,
        **mechanism_summary(rows),
        **_lm_summary(rows),
    }


def _lm_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Causal LM: perplexities of the first and last evaluated rounds (empty for classification)."""
    ev = [r for r in rows if r.get("test_perplexity") is not None]
    if not ev:
        return {}
    out: dict[str, Any] = {}
    for key in ("test_perplexity", "heldout_perplexity", "client_val_perplexity", "client_val_perplexity_mean",
                "test_loss"):
        out[f"initial_{key}"], out[f"final_{key}"] = ev[0].get(key), ev[-1].get(key)
    out["best_test_perplexity"] = min(r["test_perplexity"] for r in ev)
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
    summary["wall_time_human"] = human_duration(summary.get("wall_time_s"))
    if context.get("select_model") == "best-val":  # the run ended with the round validation chose
        from hfedmoe.engines.best import best_round_on_disk, selected_summary

        summary.update(selected_summary(rows, str(context.get("task", "classification")),
                                        best_round_on_disk(out_dir / "checkpoints")))
    summary["warnings"] = [*context.get("data_warnings", []), *learning_warnings(
        summary.get("final_test_accuracy"), summary.get("majority_rate"), summary.get("final_test_pred_share") or [],
        summary.get("label_names")), *drift_warnings(rows, context.get("test_label_share") or [],
                                                    summary.get("label_names"), summary.get("selected_round"))]
    _atomic_write(out_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    label = summary["method"] or "run"
    if summary.get("initial_test_perplexity") is not None:  # causal LM: perplexity, no accuracy
        plots = {f"perplexity_vs_{x}.png": plot_perplexity(rows, out_dir / f"perplexity_vs_{x}.png",
                                                            x="sim_time_s" if x == "time" else x)
                 for x in ("round", "time")}
    else:
        plots = {
            "accuracy_vs_round.png": plot_accuracy({label: rows}, out_dir / "accuracy_vs_round.png", x="round",
                                                   majority_rate=summary.get("majority_rate")),
            "accuracy_vs_time.png": plot_accuracy({label: rows}, out_dir / "accuracy_vs_time.png", x="sim_time_s",
                                                  majority_rate=summary.get("majority_rate")),
        }
    clients = context.get("clients", [])
    n = len(clients)
    labels = [f"{c['client_id']} {c['profile']} b={c['budget']}" for c in clients]
    largest = sorted(range(n), key=lambda i: (-clients[i]["num_train"], i))
    plots["usage_heatmap.png"] = plot_heatmaps(rows, n, out_dir / "usage_heatmap.png", key="client_usage",
                                               title="expert usage u_c(e) per client (mean over rounds)",
                                               client_labels=labels, client_order=largest)
    plots["trained_heatmap.png"] = plot_heatmaps(rows, n, out_dir / "trained_heatmap.png", key="client_trained",
                                                 title="fraction of rounds each client trained each expert",
                                                 client_labels=labels, client_order=largest)
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


def _settings_lines(settings: dict[str, Any]) -> list[str]:
    if not settings:
        return []
    lines = ["## Key settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in settings.items()]
    return lines + [""]


def _class_lines(s: dict[str, Any]) -> list[str]:
    acc = s.get("final_test_class_accuracy") or []
    if not acc:
        return []
    names = s.get("label_names") or [str(i) for i in range(len(acc))]
    share = s.get("final_test_pred_share") or [None] * len(acc)
    lines = ["## Per class (final global model, test set)", "", "| class | accuracy (recall) | share of predictions |",
             "|---|---|---|"]
    lines += [f"| {names[k] if k < len(names) else k} | {_fmt(acc[k], True)} | {_fmt(share[k], True)} |"
              for k in range(len(acc))]
    return lines + ["", f"macro-F1: {_fmt(s.get('final_test_macro_f1'), True)}", ""]


def _client_lines(clients: list[dict[str, Any]]) -> list[str]:
    """Every client up to MAX_CLIENT_ROWS; beyond, aggregates and the largest MAX_CLIENT_ROWS (stated)."""
    import numpy as np

    lines = ["## Clients", ""]
    shown = clients
    if len(clients) > MAX_CLIENT_ROWS:
        sizes = np.array([c["num_train"] for c in clients])
        budgets = np.array([c["budget"] for c in clients])
        lines += [f"{plural(len(clients), 'client')}; training examples per client: min {sizes.min()}, median "
                  f"{int(np.median(sizes))}, max {sizes.max()}, total {sizes.sum()}; expert budgets: "
                  + ", ".join(f"{b}: {int((budgets == b).sum())} clients" for b in np.unique(budgets))
                  + f". The table lists the {MAX_CLIENT_ROWS} largest clients.", ""]
        shown = sorted(clients, key=lambda c: (-c["num_train"], c["client_id"]))[:MAX_CLIENT_ROWS]
    lines += ["| client | profile | train | val | expert budget | fits full training |", "|---|---|---|---|---|---|"]
    for c in shown:
        lines.append(f"| {c['client_id']}{' ' + c['name'] if c.get('name') else ''} | {c['profile']} | "
                     f"{c['num_train']} | {c['num_val']} | {c['budget']} | {'yes' if c['fits_full'] else 'no'} |")
    return lines + [""]


def _selected_lines(s: dict[str, Any], lm: bool) -> list[str]:
    """The kept model of ``federation.select_model = "best-val"`` (none otherwise)."""
    if s.get("selected_round") is None:
        return []
    if lm:
        return [f"- kept model (federation.select_model = best-val): round {s['selected_round']}, mean client "
                f"validation perplexity {_fmt(s['selected_val_score'])}; its test perplexity "
                f"{_fmt(s.get('selected_test_perplexity'))} (last round {_fmt(s.get('final_test_perplexity'))})"]
    return [f"- kept model (federation.select_model = best-val): round {s['selected_round']}, pooled client validation "
            f"accuracy {_fmt(s['selected_val_score'], True)}; its test accuracy {_fmt(s.get('selected_test_accuracy'), True)}, "
            f"macro-F1 {_fmt(s.get('selected_test_macro_f1'), True)} (last round {_fmt(s.get('final_test_accuracy'), True)}); "
            "predict and export use this model"]


def render_markdown(rows: list[dict[str, Any]], summary: dict[str, Any], clients: list[dict[str, Any]],
                    plots: dict[str, Any]) -> str:
    s = summary
    lm = s.get("initial_test_perplexity") is not None  # causal LM: no labels, no accuracy
    accuracy_lines = [] if lm else [
        f"- test accuracy: round 0 {_fmt(s['initial_test_accuracy'], True)} -> final "
        f"{_fmt(s['final_test_accuracy'], True)} (best {_fmt(s['best_test_accuracy'], True)}); "
        f"majority-class rate {_fmt(s.get('majority_rate'), True)}; final macro-F1 "
        f"{_fmt(s.get('final_test_macro_f1'), True)}",
        f"- per-client validation accuracy of the final global model: min "
        f"{_fmt(s['final_client_val_accuracy_min'], True)}, mean {_fmt(s['final_client_val_accuracy_mean'], True)}",
    ]
    lines = [
        f"# hfedmoe run: {s.get('method')}",
        "",
        f"- model: {s.get('model', '-')}",
        f"- data: {s.get('dataset', '-')}" + (f" ({s['data_source']})" if s.get("data_source") else ""),
        *([f"- classes: {s['classes']}"] if s.get("classes") else []),
        f"- rounds: {s['rounds']}, simulated time {human_duration(s['sim_time_s'])} (compute "
        f"{human_duration(s.get('sim_compute_time_s', 0))}, communication {human_duration(s.get('sim_comm_time_s', 0))}, "
        f"on each round's slowest client), wall time {human_duration(s['wall_time_s'])}",
        *accuracy_lines,
        *_selected_lines(s, lm),
        *([f"- perplexity (causal LM): test {_fmt(s['initial_test_perplexity'])} -> {_fmt(s['final_test_perplexity'])}; "
           f"held-out {_fmt(s.get('initial_heldout_perplexity'))} -> {_fmt(s.get('final_heldout_perplexity'))}; "
           "per client's validation split (client: round 0 -> final): " + ", ".join(
               f"{c}: {_fmt(a)} -> {_fmt(b)}" for c, (a, b) in
               enumerate(zip(s['initial_client_val_perplexity'], s['final_client_val_perplexity'])))]
          if lm else []),
        *([f"- sequences: {s['lm_layout']}"] if lm and s.get("lm_layout") else []),
        f"- failed client-rounds: {s['failed_client_rounds']}; upload {s['upload_bytes_per_round'] / 1e6:.2f} MB "
        f"and download {s['download_bytes_per_round'] / 1e6:.2f} MB per round",
        f"- rejected client updates: {s.get('rejected_client_rounds', 0)}"
        + (f"; client-level DP: epsilon {s['dp_epsilon']:.3g} at delta {s['dp_delta']:.0e} (worst client, "
           f"Opacus RDP accountant)" if s.get("dp_epsilon") is not None else "; no differential privacy"),
        "",
    ]
    for w in s.get("warnings") or []:
        lines.append(f"> **Warning:** {w}")
        lines.append("")
    lines += _settings_lines(s.get("settings") or {})
    lines += _class_lines(s)
    if clients:
        lines += _client_lines(clients)
    lines += render_mechanisms(rows, summary, clients)
    first = "| round | test ppl | held-out ppl |" if lm else "| round | test acc | macro-F1 |"
    lines += ["## Rounds", "", first + " test loss | train loss | sim time (s) | compute (s) | "
              "communication (s) | failed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if lm:
            lead = f"| {r['round']} | {_fmt(r.get('test_perplexity'))} | {_fmt(r.get('heldout_perplexity'))} | "
        else:
            lead = f"| {r['round']} | {_fmt(r.get('test_accuracy'), True)} | {_fmt(r.get('test_macro_f1'), True)} | "
        lines.append(lead + f"{_fmt(r.get('test_loss'))} | {_fmt(r.get('train_loss'))} | {r['sim_time_s']:.1f} | "
                     f"{r.get('round_compute_time_s', 0.0):.2f} | {r.get('round_comm_time_s', 0.0):.2f} | "
                     f"{len(r['failed_clients'])} |")
    lines.append("")
    lines += ["## Plots", ""]
    for name, path in plots.items():
        if path is not None:
            lines.append(f"![{name}]({name})")
    lines.append("")
    return "\n".join(lines)
