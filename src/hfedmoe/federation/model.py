"""Build the run's model and tokenizer from its config (sequence classification)."""

from __future__ import annotations

import logging

import torch

from hfedmoe.config import ModelConfig
from hfedmoe.errors import HFedMoEError

log = logging.getLogger(__name__)


def wrap_for_run(model, cfg: ModelConfig):
    """The run's MoE adapter over ``model``: :func:`hfedmoe.moe.wrap`, plus LoRA experts
    (:func:`hfedmoe.moe.lora_model.enable_lora`) when ``model.lora_r > 0``. Every engine and the
    CLI build their adapter here, so a run's state-dict keys are the same everywhere."""
    from hfedmoe.moe import wrap

    mm = wrap(model)
    if cfg.lora_r > 0:
        from hfedmoe.moe.lora_model import enable_lora

        mm = enable_lora(mm, cfg.lora_r, cfg.lora_alpha)
    return mm


def with_adapters(built: tuple, cfg: ModelConfig, seed: int) -> tuple:
    """``(model, tokenizer, description)`` with MoE adapters inserted when ``model.adapter = "moe"``
    (:func:`hfedmoe.moe.sparse_adapter.add_moe_adapters`, seeded by the run seed)."""
    if getattr(cfg, "adapter", "none") != "moe":
        return built
    from hfedmoe.moe.sparse_adapter import add_moe_adapters

    model, tok, desc = built
    try:
        count = add_moe_adapters(model, cfg.num_experts, cfg.top_k, cfg.adapter_rank,
                                 layers=cfg.adapter_layers, seed=seed)
    except ValueError as exc:
        if isinstance(exc, HFedMoEError):
            raise
        raise HFedMoEError(f"model.adapter_layers: {exc}") from None
    return model, tok, (f"{desc} + MoE adapters on {count} FFNs ({cfg.num_experts} experts of rank "
                        f"{cfg.adapter_rank}, top-{cfg.top_k}; base frozen)")


def build_model(cfg: ModelConfig, num_labels: int, seed: int):
    """Return ``(model, tokenizer, description)``; the model is an MoE sequence classifier
    (``model.task = "causal-lm"``: an MoE causal LM, see :mod:`hfedmoe.federation.lm_model`), or a
    dense one with MoE adapters (``model.adapter = "moe"``)."""
    return with_adapters(build_base_model(cfg, num_labels, seed), cfg, seed)


def build_base_model(cfg: ModelConfig, num_labels: int, seed: int):
    """The model before any MoE adapter (for ``model.adapter = "moe"``: the frozen dense base that
    :func:`hfedmoe.moe.adapter_export.load_moe_adapters` loads an export into)."""
    if getattr(cfg, "task", "classification") == "causal-lm":
        from hfedmoe.federation.lm_model import build_lm_model

        return build_lm_model(cfg, seed)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig
    from transformers import BertForSequenceClassification

    from hfedmoe.assets.models import load_minilm_tokenizer, minilm_dir
    from hfedmoe.moe.build import moefy_bert

    torch.manual_seed(seed)
    if cfg.name == "minilm-moe":
        model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=num_labels)
        moefy_bert(model, cfg.num_experts, cfg.top_k, seed=seed)
        return model, load_minilm_tokenizer(), (
            f"all-MiniLM-L6-v2 MoEfied: {cfg.num_experts} experts/layer, top-{cfg.top_k}"
        )
    if cfg.name == "minilm":
        model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=num_labels)
        return model, load_minilm_tokenizer(), "all-MiniLM-L6-v2 (dense)"
    if cfg.name in ("tiny-moe", "tiny-bert"):
        tok = load_minilm_tokenizer()
        heads = 3 if cfg.tiny_hidden % 3 == 0 else 2
        bert_cfg = BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=cfg.tiny_hidden,
            num_hidden_layers=cfg.tiny_layers,
            num_attention_heads=heads,
            intermediate_size=cfg.tiny_hidden * 4 // cfg.num_experts * cfg.num_experts,
            max_position_embeddings=512,
            num_labels=num_labels,
            attn_implementation="eager",
        )
        model = BertForSequenceClassification(bert_cfg)
        if cfg.name == "tiny-bert":
            return model, tok, f"tiny random BERT (hidden {cfg.tiny_hidden}, {cfg.tiny_layers} layers, dense)"
        moefy_bert(model, cfg.num_experts, cfg.top_k, seed=seed)
        return model, tok, f"tiny random BERT (hidden {cfg.tiny_hidden}, {cfg.tiny_layers} layers) MoEfied"
    if cfg.name == "scratch-moe":
        from hfedmoe.federation.lm_model import scratch_description
        from hfedmoe.pretrain.presets import pretrained_path

        path = pretrained_path(cfg.preset, cfg.pretrain_seed)
        model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=num_labels,
                                                                   dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(str(path)), scratch_description(cfg, model)
    if cfg.name == "hf":
        from pathlib import Path

        from hfedmoe.federation.quant import from_pretrained_kwargs

        if not Path(cfg.path).is_dir():
            raise HFedMoEError(f"model.path: expected a local checkpoint directory, got {cfg.path!r} (not found)")
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                cfg.path, num_labels=num_labels, **from_pretrained_kwargs(cfg.load_in_4bit))
            tok = AutoTokenizer.from_pretrained(cfg.path)
        except (OSError, ValueError) as exc:
            raise HFedMoEError(f"model.path: cannot load an HF checkpoint from {cfg.path!r}: {exc}") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        return model, tok, f"{type(model).__name__} from {cfg.path}"
    raise HFedMoEError(f"model.name: expected minilm-moe | tiny-moe | scratch-moe | minilm | tiny-bert | hf, "
                       f"got {cfg.name!r}")
