"""A client's per-round statistics, kept on the model's device and read once per client-round.

Per training step the client adds, for every MoE layer, the router probabilities of the real
tokens (Eq. 16's sums), the batch importance ``s_b`` (Eq. 5, with the run's pooling), which experts were selected and
reached by a token (trained this step), and the token-expert pairs for the FLOP model. All of it
is computed with masks and static shapes (no data-dependent indexing), so a step adds no
device->host read; :meth:`RoundStats.finish` reads everything back in a few transfers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hfedmoe.core.selection import routed_pair_counts
from hfedmoe.moe.contexts import routing_scores


@dataclass
class RoundTotals:
    """What :meth:`RoundStats.finish` reads back (host tensors and numbers)."""

    usage: torch.Tensor  # (L, E) float32, Eq. 16 over the client's real tokens
    importance: torch.Tensor  # (L, E) float32, mean per-step s_b
    selected_counts: torch.Tensor  # (L, E) long, steps in which each expert was selected and reached
    num_tokens: int
    loss_sum: float
    step_pairs: list[tuple[list[int], list[int]]]  # per step: (routed pairs (L,), trained pairs (L,))


class RoundStats:
    """Accumulators ``(L, E)`` on ``device``; :meth:`add_step` per step, :meth:`finish` once."""

    def __init__(self, num_layers: int, num_experts: int, lam: float, device: torch.device, diag=None,
                 pooling: str = "token") -> None:
        self.L, self.E, self.lam, self.diag, self.pooling = num_layers, num_experts, lam, diag, pooling
        zeros = dict(device=device)
        self.prob_sums = torch.zeros(num_layers, num_experts, dtype=torch.float64, **zeros)  # (L, E)
        self.imp_sums = torch.zeros(num_layers, num_experts, dtype=torch.float64, **zeros)  # (L, E)
        self.selected = torch.zeros(num_layers, num_experts, dtype=torch.long, **zeros)  # (L, E)
        self.tokens = torch.zeros((), dtype=torch.long, **zeros)
        self.loss_sum = torch.zeros((), dtype=torch.float64, **zeros)
        self.step_pairs: list[torch.Tensor] = []  # per step (2, L) long
        self.num_steps = 0

    def add_step(self, capture, chosen: Sequence[torch.Tensor], loss: torch.Tensor, *, count_selected: bool,
                 all_routed_trained: bool) -> None:
        """One step: ``capture`` (the step's routing), ``chosen[l]`` (host LongTensor, the experts the
        step trained in layer l), the step's ``loss`` (0-dim). ``all_routed_trained``: every routed
        pair went through backward (the oracle computes every expert's gradient)."""
        pairs, trained_pairs = [], []
        for l in range(self.L):
            r = capture.layer(l)
            if self.diag is not None:
                self.diag.update(r)
            device = r.gate_probs.device
            real = r.token_mask.to(device=device, dtype=torch.float64).unsqueeze(1)  # (T, 1)
            self.prob_sums[l] += (r.gate_probs.double() * real).sum(dim=0)  # (E,)
            self.imp_sums[l] += routing_scores(r, self.lam, self.pooling).double()  # (E,) s_b
            hits = routed_pair_counts(r.topk_idx, r.token_mask, self.E)  # (E,) real pairs per expert
            sel = torch.zeros(self.E, dtype=torch.bool, device=device)
            sel[torch.as_tensor(chosen[l], dtype=torch.long).to(device)] = True
            trained = sel & (hits > 0)  # (E,) selected and reached by a token: got a gradient
            if count_selected:
                self.selected[l] += trained
            pairs.append(hits.sum())
            trained_pairs.append(pairs[-1] if all_routed_trained else (hits * trained).sum())
        if self.L:
            self.tokens += capture.layer(0).token_mask.sum()
            self.step_pairs.append(torch.stack([torch.stack(pairs), torch.stack(trained_pairs)]))  # (2, L)
        self.loss_sum += loss.detach().double()
        self.num_steps += 1

    def finish(self) -> RoundTotals:
        """Read the round back to the host (once per client-round)."""
        num_tokens = int(self.tokens)
        steps = max(self.num_steps, 1)
        usage = (self.prob_sums / max(num_tokens, 1)).float().cpu()  # (L, E)
        importance = (self.imp_sums / steps).float().cpu()  # (L, E)
        pairs = torch.stack(self.step_pairs).tolist() if self.step_pairs else []  # (steps, 2, L)
        return RoundTotals(usage=usage, importance=importance, selected_counts=self.selected.cpu(),
                           num_tokens=num_tokens, loss_sum=float(self.loss_sum),
                           step_pairs=[(p[0], p[1]) for p in pairs])
