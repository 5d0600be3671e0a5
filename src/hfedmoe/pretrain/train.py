"""Pretrain a preset from scratch on the domains8 corpus: deterministic, cached, resumable.

Batches: each of the ``batch_size`` rows picks one of the preset's pretraining domains uniformly and a random window of
``seq_len`` tokens from that domain's packed stream (``<s> unit </s> <s> unit </s> ...``); the
row's draws come from ``numpy.random.default_rng([seed, step])``, so a resumed run draws exactly
what an uninterrupted one would. The tail of every domain's stream (``eval_blocks`` windows) is
never trained on: the report's per-domain perplexity and routing statistics come from it.

Layout while training: ``DIR.partial/`` (tokenizer, ``state.pt`` every ``checkpoint_every`` steps);
when done it becomes ``DIR/`` (config, safetensors, tokenizer, ``pretrain.json``) in one rename.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hfedmoe.pretrain.corpus import DOMAINS, domain_corpus
from hfedmoe.pretrain.model import build_model
from hfedmoe.pretrain.presets import PretrainPreset, get_preset, preset_dir
from hfedmoe.pretrain.report import routing_report

log = logging.getLogger(__name__)
StepCallback = Callable[[int, int, float], None]  # (step done, total steps, loss)


def domain_streams(p: PretrainPreset, tokenizer) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per domain (all of :data:`DOMAINS`, in order): ``(train stream (T,), held-out windows (n, seq_len))``;
    only the preset's own domains are sampled for training (:func:`sample_batch`)."""
    corpus = domain_corpus(pretrain_per_domain=p.per_domain_pretrain)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    train, held = [], []
    for domain in DOMAINS:
        ids = tokenizer(corpus.pretrain[domain], add_special_tokens=False)["input_ids"]
        stream = np.fromiter((t for row in ids for t in (bos, *row, eos)), dtype=np.int64)
        tail = p.eval_blocks * p.seq_len
        if len(stream) < tail + 2 * p.seq_len:
            raise ValueError(f"domain {domain!r}: {len(stream)} tokens, too few for {p.eval_blocks} held-out windows")
        train.append(stream[:-tail])
        held.append(stream[-tail:].reshape(p.eval_blocks, p.seq_len))
    return train, held


def sample_batch(streams: list[np.ndarray], p: PretrainPreset, seed: int, step: int) -> torch.Tensor:
    """``(batch_size, seq_len)`` token windows of step ``step`` (a pure function of seed and step),
    each from one of the preset's pretraining domains (uniformly)."""
    rng = np.random.default_rng([seed, step])
    domains = [DOMAINS.index(d) for d in p.domains]
    domains = rng.choice(domains, size=p.batch_size)
    rows = []
    for d in domains:
        start = int(rng.integers(0, len(streams[d]) - p.seq_len))
        rows.append(streams[d][start: start + p.seq_len])
    return torch.from_numpy(np.stack(rows))


def lr_at(p: PretrainPreset, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr``."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    frac = (step - p.warmup_steps) / max(1, p.steps - p.warmup_steps)
    return p.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def _save_state(path: Path, model, opt, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)


def _tokenizer(work: Path, p: PretrainPreset):
    from transformers import AutoTokenizer

    from hfedmoe.pretrain.tokenizer import train_bpe

    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(tok_dir))
    corpus = domain_corpus(pretrain_per_domain=p.per_domain_pretrain)
    tok = train_bpe((u for d in p.domains for u in corpus.pretrain[d]), p.vocab_size)
    tok.save_pretrained(str(tok_dir))
    return tok


def pretrain(name: str, seed: int = 0, *, root: Path | None = None, on_step: StepCallback | None = None,
             stop_after: int | None = None) -> Path:
    """Build preset ``name`` (or return its cached directory). ``stop_after``: stop once that many
    steps are done, leaving the resumable partial state (tests of resume)."""
    out = preset_dir(name, seed, root)
    if (out / "pretrain.json").is_file():
        return out
    p = get_preset(name)
    work = out.with_name(out.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(work, p)
    streams, held = domain_streams(p, tok)
    model = build_model(p, tok, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(0.9, 0.95), weight_decay=0.01)
    start = 0
    state_path = work / "state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        log.info("resuming %s from step %d", name, start)
    model.train()
    t0 = time.perf_counter()
    for step in range(start, p.steps):
        if stop_after is not None and step >= stop_after:
            _save_state(state_path, model, opt, step)
            return work
        batch = sample_batch(streams, p, seed, step)  # (B, S)
        for group in opt.param_groups:
            group["lr"] = lr_at(p, step)
        loss = model(input_ids=batch, labels=batch).loss  # next-token loss + aux_loss_coef * load balancing
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step + 1, p.steps, float(loss.detach()))
        if (step + 1) % p.checkpoint_every == 0 and step + 1 < p.steps:
            _save_state(state_path, model, opt, step + 1)
    seconds = time.perf_counter() - t0
    report = {"preset": name, "seed": seed, "steps": p.steps, "pretraining_domains": list(p.domains), "train_seconds_this_process": round(seconds, 1),
              "parameters": sum(t.numel() for t in model.parameters()),
              "domains": list(DOMAINS), **routing_report(model, held, list(DOMAINS))}
    final = work / "final"
    model.config.output_router_logits = False  # fine-tuning and perplexity: the plain next-token loss
    model.save_pretrained(str(final))
    tok.save_pretrained(str(final))
    (final / "pretrain.json").write_text(json.dumps(report, indent=1))
    os.replace(final, out)
    shutil.rmtree(work)
    return out
