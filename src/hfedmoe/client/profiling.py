"""The forward-only passes a client pays for besides training: FedMoE's profiling pass over its
data (usage and importance of an unrestricted routing) and the FLOP shape of any forward-only pass."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from hfedmoe.core.flops import BatchShape
from hfedmoe.core.usage import UsageAccumulator
from hfedmoe.data.batches import TokenizedTexts, iter_batches
from hfedmoe.moe import MoEModel
from hfedmoe.moe.contexts import routing_scores

if TYPE_CHECKING:
    from hfedmoe.client.train import TrainSettings


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on ``device`` (on the CPU, ``Tensor.to`` returns the same tensors: no copy)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def forward_shape(capture, attention_mask: torch.Tensor, num_layers: int) -> BatchShape:
    """The FLOP shape of a forward-only pass captured in ``capture`` over a batch with
    ``attention_mask`` (B, S): every real token's top-k pairs per layer, none through backward."""
    pairs = [int(capture.layer(l).token_mask.sum()) * capture.layer(l).topk_idx.shape[1] for l in range(num_layers)]
    num_seq, padded_len = (int(x) for x in attention_mask.shape)
    return BatchShape(num_seq, padded_len, pairs, [0] * num_layers)


@torch.no_grad()
def profile_routing(
    mm: MoEModel, data: TokenizedTexts, indices: np.ndarray, settings: TrainSettings, max_batches: int,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor, list[BatchShape]]:
    """Usage (Eq. 16) and mean per-batch importance (Eq. 5), both ``(L, E)``, of an unrestricted
    no-grad pass over up to ``max_batches`` shuffled batches of the client's data, and the shape of
    each batch the pass ran (its forward compute counts in the client's FLOPs)."""
    L, E = mm.num_layers, mm.num_experts
    acc = [UsageAccumulator(E) for _ in range(L)]
    imp = torch.zeros(L, E, dtype=torch.float64)
    shapes: list[BatchShape] = []
    n = 0
    was_training = mm.model.training
    mm.model.eval()
    for batch in iter_batches(data, indices, settings.batch_size, shuffle=True, rng=rng):
        if n >= max_batches:
            break
        batch = to_device(batch, next(mm.model.parameters()).device)
        with mm.capture_routing(batch["attention_mask"]) as cap:
            mm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        for l in range(L):
            r = cap.layer(l)
            acc[l].update(r.gate_probs, r.token_mask)
            imp[l] += routing_scores(r, settings.lam, settings.pooling).double().cpu()
        shapes.append(forward_shape(cap, batch["attention_mask"], L))
        n += 1
    mm.model.train(was_training)
    usage = torch.stack([a.usage() for a in acc]).float()  # (L, E)
    return usage, (imp / max(n, 1)).float(), shapes
