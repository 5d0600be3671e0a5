"""Which *dense* parameters (neither expert nor router) belong to which trainable part.

Experts and routers are found by the MoE adapter (``hfedmoe.moe``); this module only sorts the
rest by name: task head, attention, embeddings, norms. A dense tensor matching none of them
(a shared expert, the MoE block's output bias) counts as part of "experts": it is FFN capacity.
The dense FFN under an MoE adapter (``frozen_ffn``, :mod:`hfedmoe.moe.sparse_adapter`) is the part
``"frozen"``, which no ``train.trainable`` list names: it is never trained.
"""

from __future__ import annotations

import re

_PATTERNS: dict[str, re.Pattern[str]] = {
    "frozen": re.compile(r"(^|\.)frozen_ffn(\.|$)"),
    "head": re.compile(r"(^|\.)(classifier|score|lm_head|pooler|qa_outputs)(\.|$)"),
    "embeddings": re.compile(r"(^|\.)(embeddings|embed_tokens|shared|wte|wpe)(\.|$)"),
    "norms": re.compile(r"(LayerNorm|layernorm|layer_norm|(^|\.)norm|_norm)(\.|$|_)"),
    "attention": re.compile(r"(^|\.)(attention|self_attn|attn|SelfAttention|EncDecAttention)(\.|$)"),
}


def part_of(name: str) -> str:
    """The trainable part a dense parameter name belongs to."""
    for part, pat in _PATTERNS.items():
        if pat.search(name):
            return part
    return "experts"


def dense_names_for(names: list[str], parts: list[str]) -> list[str]:
    """Dense parameter names whose part is in ``parts`` (sorted, for a stable order)."""
    wanted = set(parts)
    return sorted(n for n in names if part_of(n) in wanted)
