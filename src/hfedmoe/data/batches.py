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
