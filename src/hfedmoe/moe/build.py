"""MoE models from dense pretrained weights, and tiny random MoE models for tests.

* :func:`moefy_bert` — MoEfication of a BERT (all-MiniLM-L6-v2): each FFN split by neurons into E
  experts by balanced k-means, router initialised from the cluster centroids.
* :func:`build_moe_bert_from_config` — the same structure from a saved config (to load a checkpoint).
* :func:`upcycle_llama` — sparse upcycling of a Llama (SmolLM2) into transformers' Mixtral: every
  expert is a copy of the dense MLP; Mixtral renormalises the top-k weights, so the upcycled model
  computes what the dense one did at step 0.
* :func:`tiny_model` — tiny random models with odd sizes for every supported family.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from hfedmoe.moe.minilm import MoEFeedForward

MOE_SCHEME_BERT = "moefied-bert"

TINY_FAMILIES: tuple[str, ...] = (
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "deepseek_v2",
    "deepseek_v3",
    "switch",
    "minilm_moe",
)


# --------------------------------------------------------------------------------------------
# MoEfied BERT
# --------------------------------------------------------------------------------------------
def _bert_layers(model: nn.Module) -> list[nn.Module]:
    from transformers.models.bert.modeling_bert import BertLayer

    layers = [m for m in model.modules() if isinstance(m, BertLayer)]
    if not layers:
        raise ValueError(f"moefy_bert expects a BertModel / BertFor*; {type(model).__name__} has no BertLayer")
    return layers


def _install_moe_ffn(layer: nn.Module, config, num_experts: int, top_k: int) -> MoEFeedForward:
    ffn = MoEFeedForward(config.hidden_size, config.intermediate_size, num_experts, top_k, config.hidden_act)
    dense = layer.intermediate.dense
    ffn.to(device=dense.weight.device, dtype=dense.weight.dtype)
    layer.intermediate = ffn
    layer.output.dense = nn.Identity()
    return ffn


def balanced_kmeans(rows: np.ndarray, num_clusters: int, seed: int = 0) -> np.ndarray:
    """Assign ``rows (N, D)`` to ``num_clusters`` clusters of exactly ``N / num_clusters`` rows.

    sklearn KMeans (seeded) gives the centroids; then (row, centroid) pairs are taken in order of
    increasing distance and a row joins its nearest centroid that still has room.

    Returns
    -------
    ndarray ``(N,)`` int, the cluster of each row.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    num_rows = rows.shape[0]
    if num_rows % num_clusters:
        raise ValueError(f"{num_rows} rows cannot be split into {num_clusters} equal clusters")
    capacity = num_rows // num_clusters
    # one thread: with torch's OpenMP pool loaded, sklearn's threaded Lloyd loop is ~20x slower
    with threadpool_limits(limits=1):
        kmeans = KMeans(n_clusters=num_clusters, random_state=seed, n_init=3).fit(rows)
    dist = ((rows[:, None, :] - kmeans.cluster_centers_[None, :, :]) ** 2).sum(-1)  # (N, C)
    order = np.argsort(dist, axis=None, kind="stable")
    assign = np.full(num_rows, -1, dtype=np.int64)
    fill = np.zeros(num_clusters, dtype=np.int64)
    for flat in order:
        row, cluster = divmod(int(flat), num_clusters)
        if assign[row] < 0 and fill[cluster] < capacity:
            assign[row] = cluster
            fill[cluster] += 1
    return assign


def moefy_bert(model: nn.Module, num_experts: int, top_k: int, seed: int = 0) -> nn.Module:
    """Split every BERT FFN into ``num_experts`` experts in place (MoEfication).

    Each layer's intermediate neurons (rows of ``W1``, L2-normalised) are clustered by balanced
    k-means (:func:`balanced_kmeans`) into ``E`` experts of ``I / E`` neurons: expert e gets rows of
    ``W1``/``b1`` and the matching columns of ``W2``; ``b2`` becomes the shared output bias.
    Router row e is the mean of expert e's ``W1`` rows, i.e. the router logit of a token is the
    mean pre-activation of the expert's neurons (minus their bias): informative, not one-hot.
    With ``top_k == E`` the model equals the dense one (straight-through weights, see
    :mod:`hfedmoe.moe.minilm`).

    Parameters
    ----------
    model : BertModel | BertForSequenceClassification (any module holding ``BertLayer``\\ s)
    num_experts, top_k : int
    seed : int
        Seed of the k-means.

    Returns
    -------
    The same model object, modified; ``model.config`` gains ``moe_num_experts``, ``moe_top_k``,
    ``moe_scheme = "moefied-bert"``.

    Raises
    ------
    ValueError
        If ``intermediate_size`` is not divisible by ``num_experts`` or ``top_k`` is out of range.
    """
    config = model.config
    if config.intermediate_size % num_experts:
        raise ValueError(
            f"intermediate_size={config.intermediate_size} is not divisible by num_experts={num_experts}"
        )
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
    expert_size = config.intermediate_size // num_experts
    for layer in _bert_layers(model):
        w1 = layer.intermediate.dense.weight.detach()  # (I, H)
        b1 = layer.intermediate.dense.bias.detach()  # (I,)
        w2 = layer.output.dense.weight.detach()  # (H, I)
        b2 = layer.output.dense.bias.detach()  # (H,)
        rows = w1.float().cpu().numpy()
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        assign = torch.from_numpy(balanced_kmeans(rows, num_experts, seed))  # (I,)
        ffn = _install_moe_ffn(layer, config, num_experts, top_k)
        with torch.no_grad():
            for e in range(num_experts):
                idx = torch.nonzero(assign == e).flatten().to(w1.device)  # (I/E,)
                assert idx.numel() == expert_size
                ffn.experts.up_proj[e].copy_(w1[idx])
                ffn.experts.up_proj_bias[e].copy_(b1[idx])
                ffn.experts.down_proj[e].copy_(w2[:, idx])
                ffn.gate.weight[e].copy_(w1[idx].mean(dim=0))
            ffn.output_bias.copy_(b2)
    config.moe_num_experts = num_experts
    config.moe_top_k = top_k
    config.moe_scheme = MOE_SCHEME_BERT
    return model


def build_moe_bert_from_config(config, num_labels: int | None = None) -> nn.Module:
    """A ``BertForSequenceClassification`` with the MoEfied FFN structure of ``config`` (zeros in
    the experts, no clustering), ready for ``load_state_dict`` of a saved MoEfied checkpoint."""
    from transformers import BertForSequenceClassification

    if getattr(config, "moe_scheme", None) != MOE_SCHEME_BERT:
        raise ValueError(
            f"config.moe_scheme is {getattr(config, 'moe_scheme', None)!r}, expected {MOE_SCHEME_BERT!r}"
        )
    config = copy.deepcopy(config)
    if num_labels is not None:
        config.num_labels = num_labels
    model = BertForSequenceClassification(config)
    for layer in _bert_layers(model):
        _install_moe_ffn(layer, config, config.moe_num_experts, config.moe_top_k)
    return model


# --------------------------------------------------------------------------------------------
# Sparse upcycling of Llama into Mixtral
# --------------------------------------------------------------------------------------------
def upcycle_llama(dense: nn.Module, num_experts: int, top_k: int, seed: int = 0, split: bool = False) -> nn.Module:
    """Sparse upcycling: a ``LlamaForCausalLM`` → transformers' ``MixtralForCausalLM``.

    ``split=True`` makes fine-grained experts instead of copies: each layer's FFN neurons are
    grouped by balanced k-means over the L2-normalised ``gate_proj`` rows into ``num_experts``
    experts of ``I / E`` neurons (expert e holds its neurons' gate/up rows and down columns, the
    down slice scaled by ``top_k`` because Mixtral's top-k weights sum to 1); router row e is the
    mean of its neurons' gate rows scaled to norm 1e-3 (near-equal weights). With ``top_k == E`` and equal router weights this is the dense
    FFN; with ``top_k < E`` a token runs only k/E of the FFN, so budgets like 2 of 8 matter.

    Attention, norms, embeddings and head are copied; every expert gets the dense MLP
    (``gate_up_proj[e] = cat(gate_proj, up_proj)``, ``down_proj[e] = down_proj``); routers are
    drawn from ``N(0, initializer_range)`` with ``seed``. Mixtral renormalises the top-k weights
    to sum 1, so the upcycled model computes the dense function at step 0.

    Raises
    ------
    ValueError
        If the Llama uses attention or MLP biases (Mixtral has none) or ``top_k`` is out of range.
    """
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = dense.config
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ValueError("upcycle_llama: Mixtral has no attention/MLP biases; the Llama uses them")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
    if split and cfg.intermediate_size % num_experts:
        raise ValueError(f"intermediate_size={cfg.intermediate_size} is not divisible by num_experts={num_experts}")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    mixtral_cfg = MixtralConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size // num_experts if split else cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=head_dim,
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        rms_norm_eps=cfg.rms_norm_eps,
        use_cache=cfg.use_cache,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        tie_word_embeddings=cfg.tie_word_embeddings,
        sliding_window=None,
        attention_dropout=cfg.attention_dropout,
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        rope_parameters=copy.deepcopy(cfg.rope_parameters),
    )
    mixtral_cfg._attn_implementation = cfg._attn_implementation
    # grouped_mm (transformers' default) needs 16-byte aligned strides on CPU: odd sizes go eager
    aligned = cfg.hidden_size % 8 == 0 and mixtral_cfg.intermediate_size % 8 == 0
    mixtral_cfg._experts_implementation = getattr(cfg, "_experts_implementation", None) if aligned else "eager"
    param = next(dense.parameters())
    with torch.device("meta"):
        moe = MixtralForCausalLM(mixtral_cfg)
    moe = moe.to_empty(device=param.device).to(param.dtype)

    dense_sd = dense.state_dict()
    state: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)
    for key, target in moe.state_dict().items():
        if ".mlp.experts." in key or ".mlp.gate." in key:
            continue
        state[key] = dense_sd[key]
    for i in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{i}.mlp"
        if split:
            state.update(_split_ffn(dense_sd, prefix, num_experts, top_k, seed, param))
            continue
        gate_up = torch.cat([dense_sd[f"{prefix}.gate_proj.weight"], dense_sd[f"{prefix}.up_proj.weight"]])  # (2I, H)
        state[f"{prefix}.experts.gate_up_proj"] = gate_up.unsqueeze(0).expand(num_experts, -1, -1).clone()
        state[f"{prefix}.experts.down_proj"] = (
            dense_sd[f"{prefix}.down_proj.weight"].unsqueeze(0).expand(num_experts, -1, -1).clone()
        )
        router = torch.randn(num_experts, cfg.hidden_size, generator=gen) * cfg.initializer_range  # (E, H)
        state[f"{prefix}.gate.weight"] = router.to(device=param.device, dtype=param.dtype)
    moe.load_state_dict(state, strict=True)
    # non-persistent buffers (rotary inv_freq) were left uninitialised by to_empty: rebuild them
    rotary_cls = type(moe.model.rotary_emb)
    moe.model.rotary_emb = rotary_cls(config=moe.config).to(param.device)
    if mixtral_cfg.tie_word_embeddings:
        moe.tie_weights()
    moe.train(dense.training)
    return moe


_SPLIT_ROUTER_NORM = 1e-3


def _split_ffn(dense_sd, prefix, num_experts, top_k, seed, param) -> dict[str, torch.Tensor]:
    """Fine-grained experts of one Llama MLP (see :func:`upcycle_llama` with ``split=True``)."""
    gate = dense_sd[f"{prefix}.gate_proj.weight"]  # (I, H)
    up = dense_sd[f"{prefix}.up_proj.weight"]  # (I, H)
    down = dense_sd[f"{prefix}.down_proj.weight"]  # (H, I)
    rows = gate.float().cpu().numpy()
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    assign = torch.from_numpy(balanced_kmeans(rows, num_experts, seed)).to(gate.device)  # (I,)
    groups = [torch.nonzero(assign == e).flatten() for e in range(num_experts)]  # E x (I/E,)
    gate_up = torch.stack([torch.cat([gate[g], up[g]]) for g in groups])  # (E, 2I/E, H)
    down_e = torch.stack([down[:, g] * top_k for g in groups])  # (E, H, I/E)
    router = torch.stack([gate[g].mean(dim=0) for g in groups])  # (E, H)
    # tiny router: top-k picks by the informative ranking, the renormalised weights stay ~1/k, so
    # (down slices scaled by k) the chosen experts sum to the dense FFN restricted to their neurons
    router = router / router.norm(dim=1, keepdim=True).clamp_min(1e-12) * _SPLIT_ROUTER_NORM
    return {f"{prefix}.experts.gate_up_proj": gate_up.to(param.dtype),
            f"{prefix}.experts.down_proj": down_e.to(param.dtype),
            f"{prefix}.gate.weight": router.to(device=param.device, dtype=param.dtype)}


# --------------------------------------------------------------------------------------------
# tiny random models
# --------------------------------------------------------------------------------------------
_DECODER_COMMON = dict(
    vocab_size=99,
    hidden_size=36,
    num_hidden_layers=2,
    num_attention_heads=3,
    num_key_value_heads=1,
    max_position_embeddings=64,
    initializer_range=0.1,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)


def _tiny_config(family: str, overrides: dict):
    import transformers as tf

    if family == "mixtral":
        kw = dict(_DECODER_COMMON, intermediate_size=20, num_local_experts=5, num_experts_per_tok=2)
        return tf.MixtralConfig(**{**kw, **overrides}), tf.MixtralForCausalLM
    if family == "qwen2_moe":
        kw = dict(_DECODER_COMMON, intermediate_size=24, moe_intermediate_size=10, num_experts=7,
                  num_experts_per_tok=2, shared_expert_intermediate_size=14, decoder_sparse_step=1,
                  norm_topk_prob=False)
        return tf.Qwen2MoeConfig(**{**kw, **overrides}), tf.Qwen2MoeForCausalLM
    if family == "qwen3_moe":
        kw = dict(_DECODER_COMMON, intermediate_size=24, moe_intermediate_size=10, num_experts=5,
                  num_experts_per_tok=2, decoder_sparse_step=1, norm_topk_prob=True, head_dim=12)
        return tf.Qwen3MoeConfig(**{**kw, **overrides}), tf.Qwen3MoeForCausalLM
    if family == "olmoe":
        kw = dict(_DECODER_COMMON, intermediate_size=14, num_experts=7, num_experts_per_tok=2,
                  norm_topk_prob=False)
        kw["num_key_value_heads"] = 3
        return tf.OlmoeConfig(**{**kw, **overrides}), tf.OlmoeForCausalLM
    if family in ("deepseek_v2", "deepseek_v3"):
        kw = dict(_DECODER_COMMON, num_hidden_layers=3, intermediate_size=24, moe_intermediate_size=10,
                  n_routed_experts=6, num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                  n_group=3, topk_group=2, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4,
                  qk_nope_head_dim=8, v_head_dim=8, routed_scaling_factor=1.5, norm_topk_prob=True)
        kw["num_key_value_heads"] = 3
        if family == "deepseek_v2":
            kw.update(topk_method="group_limited_greedy", norm_topk_prob=False)
            return tf.DeepseekV2Config(**{**kw, **overrides}), tf.DeepseekV2ForCausalLM
        kw["q_lora_rank"] = 12
        return tf.DeepseekV3Config(**{**kw, **overrides}), tf.DeepseekV3ForCausalLM
    if family == "switch":
        kw = dict(vocab_size=99, d_model=36, d_kv=12, d_ff=20, num_heads=3, num_layers=2,
                  num_decoder_layers=2, num_sparse_encoder_layers=2, num_sparse_decoder_layers=2,
                  encoder_sparse_step=1, decoder_sparse_step=1, num_experts=5, expert_capacity=64,
                  router_jitter_noise=0.0, dropout_rate=0.0, initializer_factor=1.0, pad_token_id=0,
                  eos_token_id=1, decoder_start_token_id=0, relative_attention_num_buckets=8)
        return tf.SwitchTransformersConfig(**{**kw, **overrides}), tf.SwitchTransformersForConditionalGeneration
    raise ValueError(f"unknown tiny family {family!r}; expected one of {TINY_FAMILIES}")


def tiny_model(family: str, seed: int = 0, **overrides) -> nn.Module:
    """A tiny random MoE model of ``family`` (one of :data:`TINY_FAMILIES`), deterministic per seed.

    Odd sizes (hidden 36, vocab 99, 5–7 experts, top-2) catch axis mix-ups. Decoders are
    ``*ForCausalLM``; ``"switch"`` is ``SwitchTransformersForConditionalGeneration`` (needs
    ``decoder_input_ids``); ``"minilm_moe"`` is a MoEfied ``BertForSequenceClassification`` (2
    labels). ``overrides`` go to the config. The model is in eval mode with eager attention; the
    global RNG state is left untouched.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; expected one of {TINY_FAMILIES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "minilm_moe":
            from transformers import BertConfig, BertForSequenceClassification

            num_experts = overrides.pop("num_experts", 5)
            top_k = overrides.pop("top_k", 2)
            kw = dict(vocab_size=99, hidden_size=36, num_hidden_layers=2, num_attention_heads=3,
                      intermediate_size=40, max_position_embeddings=64, type_vocab_size=2,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
                      initializer_range=0.1)
            config = BertConfig(**{**kw, **overrides})
            config._attn_implementation = "eager"
            model = moefy_bert(BertForSequenceClassification(config), num_experts, top_k, seed=seed)
        else:
            config, cls = _tiny_config(family, overrides)
            config._attn_implementation = "eager"
            # transformers' default grouped_mm experts kernel needs 16-byte aligned strides on CPU,
            # which odd tiny sizes violate; the eager loop is the reference implementation anyway
            config._experts_implementation = "eager"
            model = cls(config)
            if family == "deepseek_v3":  # make the correction bias matter
                for module in model.modules():
                    if hasattr(module, "e_score_correction_bias"):
                        module.e_score_correction_bias.copy_(torch.rand(module.e_score_correction_bias.shape) * 0.1)
    return model.eval()
