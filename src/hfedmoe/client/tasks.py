"""Task-specific evaluation: causal-LM perplexity (classification lives in ``client.train``).

The causal-LM client step needs no code of its own: :func:`hfedmoe.data.batches.collate` builds
``labels`` = the tokens with padding and prompt positions set to -100, and ``model(**batch).loss``
is transformers' shifted next-token cross-entropy over the remaining positions, so
:func:`hfedmoe.client.train.train_client` trains a causal LM unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from hfedmoe.client.train import to_device
from hfedmoe.data.batches import TokenizedTexts, iter_batches
from hfedmoe.moe import MoEModel


@torch.no_grad()
def evaluate_lm(mm: MoEModel, data: TokenizedTexts, indices: np.ndarray, batch_size: int) -> dict[str, float]:
    """Token-weighted mean next-token loss and perplexity ``exp(loss)`` of ``mm.model`` on ``indices``.

    Each batch's mean loss is weighted by its number of predicted tokens (labels != -100 after the
    shift), so the result is the mean over all predicted tokens, independent of the batching.
    """
    model = mm.model
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    for batch in iter_batches(data, indices, batch_size, shuffle=False):
        n = int((batch["labels"][:, 1:] != -100).sum())  # host batch: no device read
        if n == 0:
            continue
        loss_sum += model(**to_device(batch, device)).loss.double() * n
        tokens += n
    model.train(was_training)
    loss = float(loss_sum) / tokens if tokens else float("nan")  # one device read
    return {"loss": loss, "perplexity": math.exp(loss) if tokens else float("nan"), "tokens": float(tokens)}


def client_val_perplexities(mm: MoEModel, data: TokenizedTexts, client_val: Sequence[np.ndarray],
                            batch_size: int) -> list[float]:
    """Perplexity of ``mm`` on each client's validation split ``client_val[c]`` (NaN: no split)."""
    return [evaluate_lm(mm, data, v, batch_size)["perplexity"] if len(v) else float("nan") for v in client_val]


def lm_eval_row(
    mm: MoEModel,
    data: TokenizedTexts,
    test_idx: np.ndarray,
    client_val: Callable[[], list[float]],
    heldout: TokenizedTexts | None,
    batch_size: int,
) -> dict:
    """The metrics-row fields of a causal-LM evaluation: test loss/perplexity, perplexity on each
    client's validation split (one client per outlet: per-outlet perplexity; ``client_val`` returns
    them, computed here by :func:`client_val_perplexities` or by the clients' nodes), held-out
    perplexity. ``test_accuracy`` is None (no classes); ``client_val_perplexity_max`` is the worst client."""
    test = evaluate_lm(mm, data, test_idx, batch_size)
    per_client = client_val()
    finite = [p for p in per_client if p == p]
    row = {
        "test_accuracy": None,
        "test_loss": test["loss"],
        "test_perplexity": test["perplexity"],
        "client_val_perplexity": per_client,
        "client_val_perplexity_max": max(finite) if finite else None,
        "client_val_perplexity_mean": float(np.mean(finite)) if finite else None,
    }
    if heldout is not None:
        row["heldout_perplexity"] = evaluate_lm(mm, heldout, np.arange(len(heldout)), batch_size)["perplexity"]
    return row
