"""Tokenise once, then cut padded batches (dynamic padding to the longest example of a batch)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TokenizedTexts:
    """Token ids of every example (no padding) and their labels."""

    input_ids: list[list[int]]
    labels: np.ndarray  # (N,) int64
    pad_id: int
    # causal LM: labels are the tokens themselves, minus padding and the first prompt_lengths[i]
    # tokens (None: classification, labels are the class ids above)
    prompt_lengths: list[int] | None = None
    # causal LM, optional: 1 where a token is a loss target, 0 where it is not (the prompt or user
    # turns of instruction/chat data); when set it replaces ``prompt_lengths`` in :func:`collate`
    loss_masks: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize(tokenizer, texts: Sequence[str], labels: np.ndarray, max_length: int) -> TokenizedTexts:
    """Tokenise all texts once with truncation to ``max_length`` tokens."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenizedTexts(list(enc["input_ids"]), np.asarray(labels, dtype=np.int64), int(pad_id))


def collate(data: TokenizedTexts, idx: Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
    """Right-pad the examples ``idx`` to their longest one."""
    rows = [data.input_ids[i] for i in idx]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), data.pad_id, dtype=torch.long)  # (B, S)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, S)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[j, : len(r)] = 1
    if data.prompt_lengths is not None:
        labels = ids.masked_fill(mask == 0, -100)  # (B, S): the model shifts them itself
        for j, i in enumerate(idx):
            if data.loss_masks is not None:
                keep = torch.tensor(data.loss_masks[i], dtype=torch.bool)  # (len_i,)
                labels[j, : len(keep)] = labels[j, : len(keep)].masked_fill(~keep, -100)
            else:
                labels[j, : data.prompt_lengths[i]] = -100
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    labels = torch.as_tensor(data.labels[np.asarray(idx)], dtype=torch.long)  # (B,)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def iter_batches(
    data: TokenizedTexts,
    indices: np.ndarray,
    batch_size: int,
    *,
    shuffle: bool,
    rng: np.random.Generator | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield batches over ``indices`` (shuffled with ``rng`` when asked; the last one may be short)."""
    order = np.asarray(indices)
    if shuffle:
        if rng is None:
            raise ValueError("rng: expected a numpy Generator when shuffle=True, got None")
        order = order[rng.permutation(len(order))]
    for start in range(0, len(order), batch_size):
        yield collate(data, order[start : start + batch_size])


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def local_step_count(num_examples: int, batch_size: int, local_epochs: int, local_steps: int = 0,
                     min_local_steps: int = 0) -> int:
    """Optimizer steps of one client-round: ``local_steps`` when set, else ``local_epochs`` passes
    over the client's batches, raised to ``min_local_steps`` (a small client repeats its data)."""
    if local_steps:
        return local_steps
    return max(local_epochs * num_batches(num_examples, batch_size), min_local_steps)


def tokenize_lm(
    tokenizer, texts: Sequence[str], max_length: int, prompts: Sequence[str] | None = None
) -> TokenizedTexts:
    """Causal-LM examples: ``[bos] prompt text [eos]`` truncated to ``max_length`` tokens; the
    prompt (and bos) are masked out of the loss by :func:`collate`. The prompt alone is never
    truncated away from its text: a prompt longer than ``max_length - 1`` tokens is an error."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    body = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    heads = tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else [[]] * len(body)
    ids, plens = [], []
    for head, text in zip(heads, body):
        start = bos + head
        if len(start) >= max_length:
            raise ValueError(f"data.prompt: {len(start)} prompt tokens leave none of max_length={max_length}")
        ids.append((start + text + eos)[:max_length])
        plens.append(len(start))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return TokenizedTexts(ids, np.zeros(len(ids), dtype=np.int64), int(pad_id), plens)
