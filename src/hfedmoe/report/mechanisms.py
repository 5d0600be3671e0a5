"""The "Mechanisms" section of a run report: is each HFedMoE mechanism doing anything here?

Means over the trained rounds of the per-round diagnostics (client side: selection disagreement
and IB scale; server side: tau exclusions and alpha vs data shares), with a one-line verdict each,
and the per-client accuracy of the final model with the weakest clients highlighted.

Thresholds (a mechanism below its threshold is reported INACTIVE):
* IB term: HFedMoE and its no-IB ablation pick a different set in < 1% of (batch, layer)
  decisions (:data:`hfedmoe.methods.diagnostics.INACTIVE_SELECTION`);
* tau gate: < 1% of trained (client, expert) pairs fall below tau (``INACTIVE_TAU``);
* alpha: max_c |alpha_c - 1/C| < 0.01, i.e. router weights are uniform (``INACTIVE_ALPHA``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hfedmoe.methods.diagnostics import INACTIVE_ALPHA, INACTIVE_SELECTION, INACTIVE_TAU

KEYS = ("sel_disagree_hfedmoe_freq", "sel_disagree_hfedmoe_noib", "sel_disagree_noib_freq", "ib_scale_ratio",
        "tau_excluded_frac", "alpha_std", "alpha_uniform_dev", "alpha_share_l1", "data_share_std")


def mechanism_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each diagnostic over the rounds that report it (``mech_*``), and the verdicts."""
    out: dict[str, Any] = {}
    for key in KEYS:
        vals = [r[key] for r in rows if r.get("round", 0) > 0 and isinstance(r.get(key), (int, float))]
        if vals:
            out[f"mech_{key}"] = float(np.mean(vals))
    first = rows[0] if rows else {}
    for key in ("router_top_prob", "router_top_prob_before", "router_top_prob_after"):
        if first.get(key) is not None:
            out[f"mech_{key}"] = first[key]
    verdicts = {}
    if "mech_sel_disagree_hfedmoe_noib" in out:
        verdicts["ib"] = out["mech_sel_disagree_hfedmoe_noib"] >= INACTIVE_SELECTION
    if "mech_tau_excluded_frac" in out:
        verdicts["tau"] = out["mech_tau_excluded_frac"] >= INACTIVE_TAU
    if "mech_alpha_uniform_dev" in out:
        verdicts["alpha"] = out["mech_alpha_uniform_dev"] >= INACTIVE_ALPHA
    elif any(r.get("alpha_active_clients") == 0 for r in rows):
        verdicts["alpha"] = False  # every alpha was 0: no client above tau, the router never moved
    out["mech_active"] = verdicts
    return out


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and x == x and abs(x) != float("inf")


#: Per-client rows listed at most (beyond: the weakest ones).
MAX_CLIENT_ROWS = 30


def render_mechanisms(rows: list[dict[str, Any]], summary: dict[str, Any], clients: list[dict[str, Any]]) -> list[str]:
    m = {k: v for k, v in summary.items() if k.startswith("mech_")}
    lines = ["## Mechanisms", ""]
    active = m.get("mech_active", {})

    def verdict(name: str) -> str:
        if name not in active:
            return "not measured (method without this mechanism)"
        return "active" if active[name] else "**INACTIVE** (below the documented threshold)"

    lines += [
        "| diagnostic | value | verdict |", "|---|---|---|",
        f"| IB: HFedMoE vs no-IB pick a different set (per batch-layer) | {_pct(m.get('mech_sel_disagree_hfedmoe_noib'))} "
        f"| {verdict('ib')} (threshold {_pct(INACTIVE_SELECTION)}) |",
        f"| HFedMoE vs frequency differ | {_pct(m.get('mech_sel_disagree_hfedmoe_freq'))} | |",
        f"| no-IB vs frequency differ | {_pct(m.get('mech_sel_disagree_noib_freq'))} | |",
        f"| IB scale: std(s_b - I_b) / std(s_b), i.e. of the scaled beta*KL | "
        f"{m.get('mech_ib_scale_ratio', float('nan')):.3g} | |",
        f"| tau: trained (client, expert) pairs excluded | {_pct(m.get('mech_tau_excluded_frac'))} "
        f"| {verdict('tau')} (threshold {_pct(INACTIVE_TAU)}) |",
        f"| alpha: max abs(alpha - 1/C) | {m.get('mech_alpha_uniform_dev', float('nan')):.3g} "
        f"| {verdict('alpha')} (threshold {INACTIVE_ALPHA}) |",
        f"| alpha: L1 distance to data shares (share std {m.get('mech_data_share_std', float('nan')):.3g}) "
        f"| {m.get('mech_alpha_share_l1', float('nan')):.3g} | |",
        f"| router: mean top probability at round 0 | {m.get('mech_router_top_prob', float('nan')):.3g}"
        + (f" (warm-up {m['mech_router_top_prob_before']:.3g} -> {m['mech_router_top_prob_after']:.3g})"
           if _finite(m.get("mech_router_top_prob_before")) else " (no router warm-up)") + " | |",
        "",
    ]
    ev = [r for r in rows if r.get("client_val_accuracy")]
    if ev and clients:
        acc = ev[-1]["client_val_accuracy"]
        order = sorted((a, i) for i, a in enumerate(acc) if a == a)
        weakest = {i for _, i in order[: max(1, len(order) // 4)]}
        shown = clients
        title = "Per-client validation accuracy of the final global model (weakest quarter in bold)"
        if len(clients) > MAX_CLIENT_ROWS:  # readable at hundreds of clients: the weakest only
            keep = {i for _, i in order[:MAX_CLIENT_ROWS]}
            shown = [c for c in clients if c["client_id"] in keep]
            title = (f"The {len(shown)} weakest of {len(clients)} clients by validation accuracy of the final "
                     "global model (weakest quarter of all clients in bold)")
        lines += [title + ":", "", "| client | profile | budget | val acc |", "|---|---|---|---|"]
        for c in shown:
            i = c["client_id"]
            a = _pct(acc[i]) if i < len(acc) else "-"
            cell = f"**{a}**" if i in weakest else a
            lines.append(f"| {i} | {c['profile']} | {c['budget']} | {cell} |")
        lines.append("")
    return lines
