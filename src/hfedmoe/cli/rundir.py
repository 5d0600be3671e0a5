"""A finished (or running) run directory read back: its config and its newest global model.

``hfedmoe generate`` and ``hfedmoe export`` both rebuild the run's model from ``config.toml``
(through the same :func:`~hfedmoe.federation.model.wrap_for_run` as the engines, so LoRA runs get
the same PEFT-wrapped state-dict keys) and load the newest complete checkpoint, strictly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfedmoe.config import RunConfig
from hfedmoe.errors import HFedMoEError


@dataclass
class LoadedRun:
    cfg: RunConfig
    model: Any  # the transformers model holding the newest global weights
    tokenizer: Any
    mm: Any  # hfedmoe.moe.MoEModel over ``model``
    round: int


def run_config(run_dir: Path) -> RunConfig:
    """The run's ``config.toml``; a one-line error when ``run_dir`` is not a run directory."""
    from hfedmoe.config import load_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise HFedMoEError(f"--run: expected a run directory with config.toml, got {str(run_dir)!r}")
    return load_config(run_dir / "config.toml")


def load_run(run_dir: Path, cfg: RunConfig) -> LoadedRun:
    """The run's model rebuilt from ``cfg`` with its newest complete checkpoint loaded (strict); with
    ``federation.select_model = "best-val"`` the kept best-val model (``checkpoints/best``) instead."""
    from hfedmoe.engines.checkpoint import CheckpointError, complete_rounds, load_checkpoint
    from hfedmoe.federation.model import build_model, wrap_for_run

    run_dir = Path(run_dir)
    rounds = complete_rounds(run_dir / "checkpoints")
    if not rounds:
        raise HFedMoEError(f"--run: {run_dir} has no complete checkpoint yet")
    num_labels = 1
    if cfg.model.task != "causal-lm":
        from hfedmoe.federation.data import load_run_dataset

        num_labels = load_run_dataset(cfg).num_labels
    model, tokenizer, _ = build_model(cfg.model, num_labels, cfg.seed)
    mm = wrap_for_run(model, cfg.model)
    root, kept_round = run_dir / "checkpoints", rounds[-1]
    if cfg.federation.select_model == "best-val":  # the run ended with the round validation chose
        from hfedmoe.engines.best import BEST_DIR, best_round_on_disk

        if (best := best_round_on_disk(root)) is not None:
            root, kept_round = root / BEST_DIR, best
    try:
        tensors, _ = load_checkpoint(root, kept_round)
    except CheckpointError as exc:
        raise HFedMoEError(f"--run: a checkpoint of {run_dir} is not usable ({exc}); nothing was written") from None
    model.load_state_dict(tensors, strict=True)
    from hfedmoe.federation.runtime import place_model

    model, _ = place_model(model, cfg)  # the run's device (runtime.device), like the engines
    return LoadedRun(cfg, model, tokenizer, mm, kept_round)
