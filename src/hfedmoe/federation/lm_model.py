"""Build the run's causal-LM MoE model and tokenizer (``model.task = "causal-lm"``)."""

from __future__ import annotations

from pathlib import Path

import torch

from hfedmoe.config import ModelConfig
from hfedmoe.errors import HFedMoEError


def _tokenizer_with_pad(tok):
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def scratch_description(cfg: ModelConfig, model) -> str:
    """The run header's line for a pretrained benchmark MoE."""
    return (f"{type(model).__name__} pretrained here from scratch (preset {cfg.preset}, seed {cfg.pretrain_seed}: "
            f"{cfg.num_experts} experts/layer, top-{cfg.top_k})")


def build_lm_model(cfg: ModelConfig, seed: int):
    """Return ``(model, tokenizer, description)``; the model is an MoE ``*ForCausalLM``.

    ``smollm2-moe``: SmolLM2-135M-Instruct (Q4_1 dequantised) upcycled into transformers'
    Mixtral, ``model.upcycle`` = split (fine-grained experts) or copy. ``tiny-lm``: a tiny random
    Mixtral with SmolLM2's tokenizer (tests). ``hf``: any covered MoE causal-LM checkpoint dir.
    """
    from hfedmoe.assets.models import load_smollm2_dense, load_smollm2_tokenizer
    from hfedmoe.moe.build import upcycle_llama

    torch.manual_seed(seed)
    if cfg.name == "smollm2-moe":
        dense = load_smollm2_dense()
        model = upcycle_llama(dense, cfg.num_experts, cfg.top_k, seed=seed, split=cfg.upcycle == "split")
        del dense
        kind = (f"{cfg.num_experts} fine-grained experts of I/{cfg.num_experts} neurons" if cfg.upcycle == "split"
                else f"{cfg.num_experts} copied experts")
        return model, _tokenizer_with_pad(load_smollm2_tokenizer()), (
            f"SmolLM2-135M-Instruct (Q4_1 dequantised) upcycled into Mixtral: {kind}/layer, top-{cfg.top_k}"
        )
    if cfg.name == "smollm2":
        return load_smollm2_dense(), _tokenizer_with_pad(load_smollm2_tokenizer()), "SmolLM2-135M-Instruct (dense)"
    if cfg.name == "tiny-llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = _tokenizer_with_pad(load_smollm2_tokenizer())
        heads = 3 if cfg.tiny_hidden % 3 == 0 else 2
        lcfg = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.tiny_hidden, intermediate_size=2 * cfg.tiny_hidden,
                           num_hidden_layers=cfg.tiny_layers, num_attention_heads=heads, num_key_value_heads=1,
                           max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
        lcfg._attn_implementation = "eager"
        return LlamaForCausalLM(lcfg), tok, f"tiny random Llama (hidden {cfg.tiny_hidden}, {cfg.tiny_layers} layers, dense)"
    if cfg.name == "tiny-lm":
        from transformers import MixtralConfig, MixtralForCausalLM

        tok = _tokenizer_with_pad(load_smollm2_tokenizer())
        heads = 3 if cfg.tiny_hidden % 3 == 0 else 2
        mcfg = MixtralConfig(vocab_size=len(tok), hidden_size=cfg.tiny_hidden, intermediate_size=2 * cfg.tiny_hidden,
                             num_hidden_layers=cfg.tiny_layers, num_attention_heads=heads, num_key_value_heads=1,
                             num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.top_k,
                             max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
        mcfg._attn_implementation = "eager"
        mcfg._experts_implementation = "eager"
        return MixtralForCausalLM(mcfg), tok, f"tiny random Mixtral (hidden {cfg.tiny_hidden}, {cfg.tiny_layers} layers)"
    if cfg.name == "scratch-moe":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from hfedmoe.pretrain.presets import pretrained_path

        path = pretrained_path(cfg.preset, cfg.pretrain_seed)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return model, AutoTokenizer.from_pretrained(str(path)), scratch_description(cfg, model)
    if cfg.name == "hf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from hfedmoe.federation.quant import from_pretrained_kwargs

        if not Path(cfg.path).is_dir():
            raise HFedMoEError(f"model.path: expected a local checkpoint directory, got {cfg.path!r} (not found)")
        try:
            model = AutoModelForCausalLM.from_pretrained(
                cfg.path, **{"dtype": torch.float32, **from_pretrained_kwargs(cfg.load_in_4bit)})
            tok = _tokenizer_with_pad(AutoTokenizer.from_pretrained(cfg.path))
        except (OSError, ValueError) as exc:
            raise HFedMoEError(f"model.path: cannot load an HF causal LM from {cfg.path!r}: {exc}") from None
        return model, tok, f"{type(model).__name__} from {cfg.path}"
    raise HFedMoEError(f"model.name: expected smollm2-moe | tiny-lm | scratch-moe | smollm2 | tiny-llama | hf for "
                       f"causal-lm, got {cfg.name!r}")
