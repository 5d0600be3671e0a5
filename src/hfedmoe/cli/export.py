"""``hfedmoe export``: a LoRA run's global adapter (newest checkpoint) as a PEFT directory, or an
MoE-adapter run's adapters (``model.adapter = "moe"``) in :mod:`hfedmoe.moe.adapter_export`'s layout."""

from __future__ import annotations

from pathlib import Path

from hfedmoe.errors import HFedMoEError


def export_run(run_dir: Path, out: Path) -> tuple[Path, int]:
    """Rebuild the run's model from its ``config.toml``, load its newest complete checkpoint and
    write the adapter to ``out`` (see :func:`hfedmoe.engines.shared.export_lora_adapter`).
    Returns ``(out, round)``."""
    from hfedmoe.cli.rundir import load_run, run_config
    from hfedmoe.engines.shared import export_lora_adapter
    from hfedmoe.report.metrics import read_metrics

    cfg = run_config(run_dir)
    adapters = getattr(cfg.model, "adapter", "none") == "moe"
    if cfg.model.lora_r <= 0 and not adapters:
        raise HFedMoEError(f"--run: {run_dir} fine-tuned experts in full (model.lora_r = 0, model.adapter = 'none'); "
                           "export needs a LoRA run or an MoE-adapter run")
    run = load_run(run_dir, cfg)
    rows = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if int(r["round"]) == run.round]
    row = rows[-1] if rows else {"round": run.round}
    if adapters:
        from hfedmoe.engines.shared import export_moe_adapters

        return export_moe_adapters(run.mm, cfg, out, row), run.round
    return export_lora_adapter(run.mm, cfg, out, row), run.round
