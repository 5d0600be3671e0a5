"""``hfedmoe generate``: load a causal-LM run's newest global model and stream a continuation."""

from __future__ import annotations

from pathlib import Path

import torch

from hfedmoe.errors import HFedMoEError


def load_run_model(run_dir: Path):
    """``(model, tokenizer, round)``: the run's model rebuilt from its ``config.toml`` with the
    newest complete checkpoint loaded (strict). Causal-LM runs only."""
    from hfedmoe.cli.rundir import load_run, run_config

    cfg = run_config(run_dir)
    if cfg.model.task != "causal-lm":
        raise HFedMoEError(f"--run: model.task of {run_dir} is {cfg.model.task!r}; generate needs 'causal-lm'")
    run = load_run(run_dir, cfg)
    return run.model.eval(), run.tokenizer, run.round


@torch.no_grad()
def stream_generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
    """Generate after ``prompt``, printing tokens as they come (``TextStreamer``); returns the text."""
    from transformers import TextStreamer

    if max_new_tokens < 1:
        raise HFedMoEError(f"--max-new-tokens: expected an integer >= 1, got {max_new_tokens}")
    torch.manual_seed(seed)
    from hfedmoe.client.train import to_device

    enc = to_device(dict(tokenizer(prompt, return_tensors="pt")), next(model.parameters()).device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sample = temperature > 0
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                         temperature=temperature if sample else None, top_k=None, top_p=None,
                         streamer=streamer, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
