"""The FLOP model of one local training step: what the client counts, what the simulated time
uses (:meth:`hfedmoe.core.budgets.CostModel.step_flops`) and what the benchmarks report.

Matmul FLOPs only (2 per multiply-add; norms, softmax and activations are a few percent and are
what ``torch.utils.flop_counter`` leaves out too). One MoE transformer layer is attention
(projections + the two score matmuls ``QK^T`` and ``PV``), a router and routed experts; the head
(pooler, classifier) runs once per sequence.

Counted as executed with dynamic padding: the dense layers and attention run on the padded batch
(``num_sequences x padded_len`` positions), the experts only on the real tokens routed to them
(padding skips the experts).

Backward, per layer ``l`` (the rules autograd follows):

* ``needs_input_grad(l)``: the hidden state entering layer ``l`` requires grad: something
  trainable lies below it (embeddings for ``l = 0``; anything trainable in layers ``< l``).
* Frozen attention costs 1x its forward (input gradients) only when ``needs_input_grad(l)``, and
  nothing otherwise (the old count charged it 2x always); trainable attention adds 1x for weight
  gradients. The score matmuls cost 2x their forward when anything in them requires grad.
* A trained expert costs 1x forward on its tokens for weight gradients, plus 1x for input
  gradients when its input requires grad; an expert not trained this batch runs without autograd
  and costs nothing. The router likewise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hfedmoe.core import _checks


@dataclass(frozen=True)
class BatchShape:
    """What the FLOP count needs from one batch.

    Attributes
    ----------
    num_sequences : int
        B.
    padded_len : int
        S, the batch's padded length (dynamic padding: its longest example).
    expert_pairs : sequence of int, (L,)
        Real token-expert pairs per layer (``real tokens x top_k`` without restriction).
    trained_pairs : sequence of int, (L,)
        Of those, pairs routed to an expert trained in this batch.
    """

    num_sequences: int
    padded_len: int
    expert_pairs: Sequence[int]
    trained_pairs: Sequence[int]

    @property
    def positions(self) -> int:
        return self.num_sequences * self.padded_len


@dataclass(frozen=True)
class FlopModel:
    """Matmul parameter counts of the model and what is trainable.

    Attributes
    ----------
    num_layers : int
        L, MoE layers (each with its attention).
    attention_width : int
        Width of Q and K (heads x head size; the hidden size for BERT).
    expert_params : int
        Matmul parameters of one expert.
    attention_params : int
        Matmul parameters of one layer's attention projections (Q, K, V, output).
    router_params : int
        Matmul parameters of one layer's router.
    other_layer_params : int
        Other matmul parameters per layer outside the experts (shared experts, dense FFN parts).
    head_params : int
        Matmul parameters applied once per sequence (pooler, classifier).
    frozen_layer_params : int
        Matmul parameters per layer that never train (the dense FFN under an MoE adapter): forward,
        and input gradients in backward when their input requires grad.
    attention_trainable, router_trainable, other_trainable, head_trainable, embeddings_trainable : bool
    """

    num_layers: int
    attention_width: int
    expert_params: int
    attention_params: int
    router_params: int
    other_layer_params: int = 0
    head_params: int = 0
    frozen_layer_params: int = 0
    attention_trainable: bool = False
    router_trainable: bool = True
    other_trainable: bool = False
    head_trainable: bool = True
    embeddings_trainable: bool = False

    def __post_init__(self) -> None:
        for attr in ("num_layers", "attention_width", "expert_params"):
            _checks.positive_int(attr, getattr(self, attr))
        for attr in ("attention_params", "router_params", "other_layer_params", "head_params",
                     "frozen_layer_params"):
            _checks.non_negative_int(attr, getattr(self, attr))

    def score_flops(self, shape: BatchShape) -> float:
        """Forward FLOPs of ``QK^T`` and ``PV`` in one layer: ``2 x 2 x B x S^2 x width``."""
        return 4.0 * shape.num_sequences * shape.padded_len**2 * self.attention_width

    def forward(self, shape: BatchShape) -> float:
        T = float(shape.positions)
        L = self.num_layers
        per_layer = 2.0 * T * (self.attention_params + self.router_params + self.other_layer_params
                               + self.frozen_layer_params)
        experts = 2.0 * self.expert_params * float(sum(shape.expert_pairs))
        head = 2.0 * shape.num_sequences * self.head_params
        return L * (per_layer + self.score_flops(shape)) + experts + head

    def backward(self, shape: BatchShape) -> float:
        T = float(shape.positions)
        _check_layers(shape, self.num_layers)
        flops = 0.0
        grad_in = self.embeddings_trainable  # the hidden state entering layer 0 requires grad
        for l in range(self.num_layers):
            trained = float(shape.trained_pairs[l])
            attn = 2.0 * T * self.attention_params
            # attention: input grads when its input needs them; weight grads when trainable
            inside_attn = grad_in or self.attention_trainable
            flops += attn * (int(grad_in) + int(self.attention_trainable))
            flops += 2.0 * self.score_flops(shape) * int(inside_attn)
            ffn_in = inside_attn  # the attention output (the FFN input) requires grad
            flops += 2.0 * T * self.router_params * (int(ffn_in) + int(self.router_trainable))
            flops += 2.0 * T * self.other_layer_params * (int(ffn_in) + int(self.other_trainable))
            flops += 2.0 * T * self.frozen_layer_params * int(ffn_in)
            flops += 2.0 * self.expert_params * trained * (int(ffn_in) + 1)
            grad_in = ffn_in or self.router_trainable or self.other_trainable or trained > 0
        head_w = int(self.head_trainable)
        flops += 2.0 * shape.num_sequences * self.head_params * (head_w + int(grad_in))
        return flops

    def step(self, shape: BatchShape) -> tuple[float, float]:
        """(forward, backward) FLOPs of one training step on ``shape``."""
        return self.forward(shape), self.backward(shape)


def _check_layers(shape: BatchShape, num_layers: int) -> None:
    for name in ("expert_pairs", "trained_pairs"):
        if len(getattr(shape, name)) != num_layers:
            raise ValueError(f"{name}: expected {num_layers} per-layer counts, got {len(getattr(shape, name))}")
