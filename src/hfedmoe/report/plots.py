"""PNG plots from metrics rows: accuracy vs round and vs simulated time; per-client x expert
heatmaps of usage and of training per layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_accuracy(runs: Mapping[str, Sequence[Mapping[str, Any]]], out: Path, *, x: str = "round",
                  title: str = "", majority_rate: float | None = None) -> Path:
    """One line per run (method): test accuracy against ``x`` ("round" or "sim_time_s");
    ``majority_rate``: a dashed horizontal line at the accuracy of always predicting the majority class."""
    return plot_metric(runs, out, key="test_accuracy", x=x, title=title, ylabel="test accuracy",
                       hline=None if majority_rate is None else
                       (majority_rate, f"majority class ({100 * majority_rate:.1f}%)"))


def plot_metric(runs: Mapping[str, Sequence[Mapping[str, Any]]], out: Path, *, key: str, ylabel: str,
                x: str = "round", title: str = "", hline: tuple[float, str] | None = None) -> Path:
    """One line per run (method): ``key`` of the rows that have it against ``x`` ("round" or
    "sim_time_s"), the y axis labelled ``ylabel``; ``hline``: (value, label) of a dashed reference."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colours = plt.get_cmap("tab20").colors
    styles = ("-", "--", ":", "-.")
    for i, (label, rows) in enumerate(runs.items()):
        ev = [r for r in rows if r.get(key) is not None]
        if not ev:
            continue
        # 20 distinct colours x 4 line styles: no two of up to 80 methods look alike
        ax.plot([r[x] for r in ev], [r[key] for r in ev], marker="o", ms=3, label=label,
                color=colours[(2 * i) % 20 + (i // 10) % 2], linestyle=styles[(i // 20) % 4])
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xlabel("round" if x == "round" else "simulated time (s)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_perplexity(rows: Sequence[Mapping[str, Any]], out: Path, *, x: str = "round") -> Path | None:
    """Causal LM: test and held-out perplexity against ``x`` ("round" or "sim_time_s"), and each
    client's validation perplexity as a thin line; log scale. None when no row has a perplexity."""
    ev = [r for r in rows if r.get("test_perplexity") is not None]
    if not ev:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    xs = [r[x] for r in ev]
    per_client = [r.get("client_val_perplexity") or [] for r in ev]
    for c in range(max((len(p) for p in per_client), default=0)):
        ys = [p[c] if c < len(p) and p[c] is not None else np.nan for p in per_client]
        ax.plot(xs, ys, color="grey", alpha=0.35, linewidth=0.8, label="client validation" if c == 0 else None)
    ax.plot(xs, [r["test_perplexity"] for r in ev], marker="o", ms=3, color="C0", label="test")
    if any(r.get("heldout_perplexity") is not None for r in ev):
        ax.plot(xs, [r.get("heldout_perplexity", np.nan) for r in ev], marker="s", ms=3, color="C1",
                label="held-out")
    ax.set_yscale("log")
    ax.set_xlabel("round" if x == "round" else "simulated time (s)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def client_expert_matrix(rows: Sequence[Mapping[str, Any]], key: str, num_clients: int) -> np.ndarray:
    """(C, L, E) mean over rounds of ``key`` ("client_usage" or "client_trained") per client;
    NaN for clients never sampled."""
    acc: dict[int, list[np.ndarray]] = {}
    for r in rows:
        for cid, mat in (r.get(key) or {}).items():
            acc.setdefault(int(cid), []).append(np.asarray(mat, dtype=float))
    if not acc:
        return np.zeros((0, 0, 0))
    shape = next(iter(acc.values()))[0].shape
    out = np.full((num_clients, *shape), np.nan)
    for cid, mats in acc.items():
        out[cid] = np.mean(mats, axis=0)
    return out


#: Heatmaps show at most this many client rows (more would make an unreadable, giant image).
MAX_HEATMAP_CLIENTS = 40


def plot_heatmaps(rows: Sequence[Mapping[str, Any]], num_clients: int, out: Path, *, key: str, title: str,
                  client_labels: Sequence[str] | None = None,
                  client_order: Sequence[int] | None = None) -> Path | None:
    """One panel per MoE layer: clients (rows) x experts (columns); colour range = data range.

    With more than :data:`MAX_HEATMAP_CLIENTS` clients only the first ``MAX_HEATMAP_CLIENTS`` of
    ``client_order`` (e.g. the largest clients; default: ids in order) are drawn, and the title says so.
    """
    mat = client_expert_matrix(rows, key, num_clients)  # (C, L, E)
    if mat.size == 0:
        return None
    if num_clients > MAX_HEATMAP_CLIENTS:
        keep = list(client_order if client_order is not None else range(num_clients))[:MAX_HEATMAP_CLIENTS]
        mat = mat[keep]
        if client_labels is not None:
            client_labels = [client_labels[i] for i in keep]
        title = f"{title}\n({len(keep)} of {num_clients} clients shown: the largest by training examples)"
        num_clients = len(keep)
    _, L, E = mat.shape
    cols = min(L, 3)
    nrows = (L + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols + 1.5, 0.3 * num_clients * nrows + 1.6), dpi=120,
                             squeeze=False, layout="constrained")
    finite = np.isfinite(mat).any()
    vmin = float(np.nanmin(mat)) if finite else 0.0
    vmax = float(np.nanmax(mat)) if finite else 1.0
    for layer in range(nrows * cols):
        ax = axes[layer // cols][layer % cols]
        if layer >= L:
            ax.axis("off")
            continue
        im = ax.imshow(mat[:, layer, :], aspect="auto", cmap="viridis", vmin=vmin, vmax=max(vmax, vmin + 1e-9))
        ax.set_title(f"layer {layer}", fontsize=8)
        ax.set_xticks(range(E))
        ax.set_yticks(range(num_clients))
        if client_labels is not None and layer % cols == 0:
            ax.set_yticklabels(client_labels)
        elif layer % cols:
            ax.set_yticklabels([])
        ax.tick_params(labelsize=6)
        if layer % cols == 0:
            ax.set_ylabel("client", fontsize=7)
        ax.set_xlabel("expert", fontsize=7)
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(out)
    plt.close(fig)
    return out
