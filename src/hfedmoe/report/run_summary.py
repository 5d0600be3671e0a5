"""What a finished (or starting) run writes and shows, from its run object: the report and
summary (:func:`write_report`), the banner lines (:func:`banner_lines`). Used by the CLI for the
in-process engine and by the Flower ServerApp for flower-sim (which runs in Flower's processes)."""

from __future__ import annotations

from typing import Any


def write_report(sim: Any) -> dict[str, Any]:
    """Write the run's report.md (and summary) from a finished run; returns the summary."""
    from hfedmoe.report.run_report import write_run_report
    from hfedmoe.report.settings import data_context, key_settings

    clients = [
        {"client_id": c.client_id, "profile": c.profile, "num_train": len(c.train_idx), "num_val": len(c.val_idx),
         "budget": b.budget, "fits_full": b.fits_full, "name": getattr(c, "name", "")}
        for c, b in zip(sim.fed.clients, sim.budgets)
    ]
    lm = sim.fed.layout is not None  # causal LM: no classes, no majority rate
    context = {"model": sim.model_description, "dataset": sim.fed.dataset.name, "clients": clients,
               "majority_rate": None if lm else sim.fed.majority_rate(), "num_test": len(sim.fed.test_idx),
               "label_names": list(sim.fed.dataset.label_names), "num_clients": len(clients),
               "num_examples": len(sim.fed.dataset), "budgets": [c["budget"] for c in clients],
               "settings": key_settings(sim.cfg, len(sim.fed.dataset), len(sim.fed.clients)),
               "select_model": sim.cfg.federation.select_model, "task": sim.cfg.model.task,
               **data_context(sim.cfg, sim.fed)}
    if lm:
        context["lm_layout"] = sim.fed.layout.describe(sim.cfg.data.max_length)
        context["lm_tokens_kept_share"] = sim.fed.layout.kept_share
    return write_run_report(sim.out_dir, context)


def banner_lines(sim: Any, cfg: Any) -> list[tuple[str, bool]]:
    """What a run prints before it starts, as (rich markup text, a warning for stderr): the run
    line, and the memory plan (``hfedmoe plan``; a warning when it does not fit)."""
    from hfedmoe.federation.memory import plan_memory

    lines = [(f"[bold]hfedmoe[/] {cfg.method.name} | {sim.model_description} | {sim.fed.dataset.name}: "
              f"{len(sim.fed.clients)} clients, budgets {budget_text([b.budget for b in sim.budgets])}", False)]
    plan = plan_memory(cfg, sim.mm, sim.budgets, sim.device.type)
    tight = plan.process_peak > plan.machine_available
    lines.append((("warning: " if tight else "") + plan.header(), tight))
    return lines


def budget_text(budgets: list[int]) -> str:
    """The budget list as it is for a few clients, as counts per budget for many."""
    if len(budgets) <= 16:
        return str(budgets)
    from collections import Counter

    return "{" + ", ".join(f"{b}: {n} clients" for b, n in sorted(Counter(budgets).items())) + "}"
