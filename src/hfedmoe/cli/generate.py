"""``hfedmoe generate``: load a causal-LM run's newest global model and stream a continuation."""

from __future__ import annotations

from pathlib import Path

import torch

from hfedmoe.errors import HFedMoEError


def load_run_model(run_dir: Path):
    """``(model, tokenizer, round)``: the run's model rebuilt from its ``config.toml`` with the
    newest complete checkpoint loaded (strict). Causal-LM runs only."""
    from hfedmoe.config import load_config
    from hfedmoe.engines.checkpoint import complete_rounds, load_checkpoint
    from hfedmoe.federation.model import build_model, wrap_for_run

    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise HFedMoEError(f"--run: expected a run directory with config.toml, got {str(run_dir)!r}")
    cfg = load_config(run_dir / "config.toml")
    if cfg.model.task != "causal-lm":
        raise HFedMoEError(f"--run: model.task of {run_dir} is {cfg.model.task!r}; generate needs 'causal-lm'")
    rounds = complete_rounds(run_dir / "checkpoints")
    if not rounds:
        raise HFedMoEError(f"--run: {run_dir} has no complete checkpoint yet")
    model, tokenizer, _ = build_model(cfg.model, 1, cfg.seed)
    wrap_for_run(model, cfg.model)  # LoRA experts: the same PEFT-wrapped keys as the run's checkpoints
    tensors, _ = load_checkpoint(run_dir / "checkpoints", rounds[-1])
    model.load_state_dict(tensors, strict=True)
    return model.eval(), tokenizer, rounds[-1]


@torch.no_grad()
def stream_generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
    """Generate after ``prompt``, printing tokens as they come (``TextStreamer``); returns the text."""
    from transformers import TextStreamer

    if max_new_tokens < 1:
        raise HFedMoEError(f"--max-new-tokens: expected an integer >= 1, got {max_new_tokens}")
    torch.manual_seed(seed)
    enc = tokenizer(prompt, return_tensors="pt")
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sample = temperature > 0
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                         temperature=temperature if sample else None, top_k=None, top_p=None,
                         streamer=streamer, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
