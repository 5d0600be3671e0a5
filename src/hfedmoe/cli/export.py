"""``hfedmoe export``: a LoRA run's global adapter (newest checkpoint) as a PEFT directory."""

from __future__ import annotations

from pathlib import Path

from hfedmoe.errors import HFedMoEError


def export_run(run_dir: Path, out: Path) -> tuple[Path, int]:
    """Rebuild the run's model from its ``config.toml``, load its newest complete checkpoint and
    write the adapter to ``out`` (see :func:`hfedmoe.engines.shared.export_lora_adapter`).
    Returns ``(out, round)``."""
    from hfedmoe.config import load_config
    from hfedmoe.engines.checkpoint import complete_rounds, load_checkpoint
    from hfedmoe.engines.shared import export_lora_adapter
    from hfedmoe.federation.model import build_model, wrap_for_run
    from hfedmoe.report.metrics import read_metrics

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise HFedMoEError(f"--run: expected a run directory with config.toml, got {str(run_dir)!r}")
    cfg = load_config(run_dir / "config.toml")
    if cfg.model.lora_r <= 0:
        raise HFedMoEError(f"--run: {run_dir} fine-tuned experts in full (model.lora_r = 0); export needs a LoRA run")
    rounds = complete_rounds(run_dir / "checkpoints")
    if not rounds:
        raise HFedMoEError(f"--run: {run_dir} has no complete checkpoint yet")
    num_labels = 1
    if cfg.model.task != "causal-lm":
        from hfedmoe.federation.data import load_run_dataset

        num_labels = load_run_dataset(cfg).num_labels
    model, _, _ = build_model(cfg.model, num_labels, cfg.seed)
    mm = wrap_for_run(model, cfg.model)
    tensors, _ = load_checkpoint(run_dir / "checkpoints", rounds[-1])
    model.load_state_dict(tensors, strict=True)
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if int(r["round"]) == rounds[-1]]
    row = rows[-1] if rows else {"round": rounds[-1]}
    return export_lora_adapter(mm, cfg, out, row), rounds[-1]
