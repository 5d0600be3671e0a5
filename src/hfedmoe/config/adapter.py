"""Consistency checks of the MoE-adapter fields (``model.adapter``, ``adapter_rank``, ``adapter_layers``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Dense models that need ``model.adapter = "moe"`` (the project trains experts; a dense model has none).
DENSE_MODELS = ("minilm", "tiny-bert", "smollm2", "tiny-llama")
#: Models that already are MoE models: an adapter on them is refused.
MOE_MODELS = ("minilm-moe", "tiny-moe", "smollm2-moe", "tiny-lm")


def check_adapter(cfg: Any, need: Callable[[bool, str, str, Any], None]) -> None:
    """Report adapter problems through ``need(cond, field, expected, actual)``."""
    m = cfg.model
    if m.adapter == "moe":
        need(m.name not in MOE_MODELS, "model.adapter", f"'none' for model.name = {m.name!r}, which already is an "
             "MoE model (adapters go on dense models: " + " | ".join((*DENSE_MODELS, "hf")) + ")", m.adapter)
        need(m.adapter_rank >= 1, "model.adapter_rank", "an integer >= 1", m.adapter_rank)
        layers = m.adapter_layers
        ok = isinstance(layers, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                              for i in layers) and len(set(layers)) == len(layers)
        need(ok, "model.adapter_layers", "a list of distinct layer indices >= 0 ([] = every layer)", layers)
        need(m.lora_r == 0, "model.lora_r", "0 with model.adapter = 'moe' (the adapter experts are the trained unit)",
             m.lora_r)
        need("experts" in cfg.train.trainable, "train.trainable",
             "a list with 'experts' when model.adapter = 'moe' (the adapter experts are the trained unit)",
             cfg.train.trainable)
    else:
        need(m.name not in DENSE_MODELS, "model.adapter", f"'moe' for the dense model.name = {m.name!r} "
             "(a dense model has no experts to train without MoE adapters)", m.adapter)
