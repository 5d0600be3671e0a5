"""``hfedmoe plan --config FILE``: predicted peak memory per client and for the whole in-process
run (:mod:`hfedmoe.federation.memory`) next to this machine's memory, before anything runs.
Builds the model and the clients as a run would, trains nothing, writes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

GIB = 2**30  # (hfedmoe.federation would import torch: the CLI imports this module at start)
from hfedmoe.errors import HFedMoEError


def build_plan(cfg):
    """``(MemoryPlan, budgets, model description)`` of ``cfg`` (no training, no files)."""
    from hfedmoe.federation.budgeting import compute_budgets
    from hfedmoe.federation.data import build_federation, load_run_dataset
    from hfedmoe.federation.memory import plan_memory
    from hfedmoe.federation.model import build_model, wrap_for_run
    from hfedmoe.federation.runtime import setup_model

    dataset = load_run_dataset(cfg)
    model, tokenizer, description = build_model(cfg.model, dataset.num_labels, cfg.seed)
    model, device = setup_model(model, cfg)
    mm = wrap_for_run(model, cfg.model)
    fed = build_federation(cfg, tokenizer, dataset)
    budgets = compute_budgets(cfg, mm, fed)
    return plan_memory(cfg, mm, budgets, device.type), budgets, description


def plan_lines(cfg, config: Path | None) -> tuple[list[str], int]:
    """The lines ``hfedmoe plan`` prints and its exit code (0 fits, 1 tight: above the memory
    available now). A run above the machine's total memory raises :class:`HFedMoEError` (exit 2)."""
    plan, budgets, description = build_plan(cfg)
    lines = [f"plan for {config or 'the defaults'}: {cfg.method.name} | {description}",
             f"model weights {plan.weights_bytes / GIB:.2f} GB (float32 master weights)",
             "client  profile                  budget  predicted step peak"]
    for cid, (b, nbytes) in enumerate(zip(budgets, plan.client_bytes)):
        lines.append(f"{cid:>6}  {b.profile.name:<24} {b.budget:>6}  {nbytes / GIB:8.3f} GB")
    lines.append("(a client's step: the cost model's weights, gradients, optimizer state and activations, "
                 "plus 3 copies of each trained expert: its stacked stand-in or AdamW's foreach temporary, its first value, "
                 "the allocator's retained heap)")
    lines.append(f"in-process run: largest client + global copy and aggregation sums "
                 f"({plan.engine_bytes / GIB:.2f} GB) + runtime ({plan.runtime_bytes / GIB:.2f} GB)")
    lines.append(plan.header())
    if plan.process_peak > plan.machine_total:
        raise HFedMoEError(
            f"plan: predicted peak {plan.process_peak / GIB:.2f} GB exceeds this machine's "
            f"{plan.machine_total / GIB:.1f} GB (lower the expert budgets, use model.lora_r > 0, "
            f"train fewer parts or enable train.gradient_checkpointing)")
    if plan.process_peak > plan.machine_available:
        lines.append(f"warning: predicted peak is above the {plan.machine_available / GIB:.1f} GB available now")
        return lines, 1
    return lines, 0


def plan(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML preset (configs/*.toml)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a field: key=value (dotted)")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of internal errors")] = False,
) -> None:
    """Predicted peak memory per client and for the run next to this machine's memory (exit 2: it
    cannot fit; 1: above the memory available now)."""
    from hfedmoe.cli.app import _guard, _setup_logging, console
    from hfedmoe.config import load_config

    _setup_logging(False, True)

    def go() -> None:
        lines, code = plan_lines(load_config(config, set_ or []), config)
        console.print("\n".join(lines), highlight=False, markup=False)
        if code:
            raise typer.Exit(code)

    _guard(go, debug)
