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


def check_max_new_tokens(max_new_tokens: int) -> None:
    """Checked before any model is loaded (a one-line error, exit 2)."""
    if max_new_tokens < 1:
        raise HFedMoEError(f"--max-new-tokens: expected an integer >= 1, got {max_new_tokens}")


def prompt_ids(tokenizer, prompt: str) -> torch.Tensor:
    """``(1, S)``: ``[bos] prompt``, the way training sequences start
    (:func:`hfedmoe.data.lm_docs.text_documents`); an empty prompt is ``[bos]`` alone."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = bos + (list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else [])
    if not ids:
        raise HFedMoEError("--prompt: expected a non-empty text for a tokenizer without a bos token, got ''")
    return torch.tensor([ids], dtype=torch.long)


@torch.no_grad()
def stream_generate(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
    """Generate after ``prompt``, printing tokens as they come (``TextStreamer``); returns the text."""
    from transformers import TextStreamer

    check_max_new_tokens(max_new_tokens)
    torch.manual_seed(seed)
    from hfedmoe.client.train import to_device

    ids = prompt_ids(tokenizer, prompt)  # (1, S)
    enc = to_device({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, next(model.parameters()).device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    sample = temperature > 0
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=sample,
                         temperature=temperature if sample else None, top_k=None, top_p=None,
                         streamer=streamer, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
