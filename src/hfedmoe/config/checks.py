"""The one validation pass over a :class:`~hfedmoe.config.schema.RunConfig`: the choices of every
enumerated field and the cross-field checks, every problem reported at once in one line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hfedmoe.config.adapter import check_adapter
from hfedmoe.config.safety import check_safety
from hfedmoe.errors import HFedMoEError
from hfedmoe.pretrain.presets import PRESETS

if TYPE_CHECKING:
    from hfedmoe.config.schema import RunConfig

CHOICES: dict[str, tuple[str, ...]] = {
    "model.name": ("minilm-moe", "tiny-moe", "hf", "smollm2-moe", "tiny-lm", "scratch-moe", "minilm", "tiny-bert",
                   "smollm2", "tiny-llama"),
    "model.preset": tuple(PRESETS),
    "model.adapter": ("none", "moe"),
    "data.dataset": ("vader", "sms_spam", "trec", "bbc", "local", "healthtweets", "domains8"),
    "data.partition": ("natural", "dirichlet", "iid", "shards", "natural-dirichlet"),
    "train.optimizer": ("adamw", "sgd"),
    "train.loss": ("ce", "logit-adjusted", "balanced"),
    "train.dispatch": ("auto", "loop", "static"),
    "federation.server_optimizer": ("none", "avgm", "adam", "yogi"),
    "federation.select_model": ("last", "best-val"),
    "method.budget_scope": ("layer", "model"),
    "method.gate_weights": ("normalized", "paper-literal"),
    "method.grad_mode": ("no_grad", "detach"),
    "runtime.device": ("auto", "cpu", "cuda"),
    "runtime.dtype": ("float32", "bfloat16", "float16"),
    "engine.name": ("simulation", "flower-sim"),
    "method.pooling": ("token", "sequence"),
    "method.ib_scale": ("raw", "normalised"),
    "model.combine": ("straight-through", "topk-prob"),
    "model.task": ("classification", "causal-lm"),
    "model.upcycle": ("copy", "split"),
    "data.heldout": ("", "wikitext2"),
    "data.layout": ("truncate", "chunk", "pack"),
    "data.chat_template": ("tokenizer", "plain"),
    "data.loss_on": ("response", "all"),
}
TRAINABLE_PARTS = ("experts", "routers", "head", "attention", "embeddings", "norms")


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: an error line stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate(cfg: RunConfig, prior: list[str] | tuple[str, ...] = ()) -> None:
    """Check every field; raise one HFedMoEError listing all problems (``prior``: type errors
    found while building ``cfg``; their fields are not checked again)."""
    from hfedmoe.config.ranges import range_problems

    p: list[str] = list(prior)
    reported = {x.split(":", 1)[0] for x in p}
    for name, msg in range_problems(cfg, reported):
        reported.add(name)
        p.append(f"{name}: {msg}")

    def need(cond: bool, name: str, expected: str, actual: Any) -> None:
        if not cond and name not in reported:
            reported.add(name)
            p.append(f"{name}: expected {expected}, got {_short(actual)}")

    for dotted, choices in CHOICES.items():
        sec, fld = dotted.split(".")
        val = getattr(getattr(cfg, sec), fld)
        need(val in choices, dotted, "one of " + " | ".join(choices), val)
    m, d, t, meth, c, fed = cfg.model, cfg.data, cfg.train, cfg.method, cfg.clients, cfg.federation
    from hfedmoe.methods import METHODS  # late: methods import the client code, not the config

    need(meth.name in METHODS, "method.name", "one of " + " | ".join(METHODS), meth.name)
    need(m.num_experts >= 2, "model.num_experts", "an integer >= 2", m.num_experts)
    need(1 <= m.top_k <= max(m.num_experts, 1), "model.top_k", f"an integer in [1, {m.num_experts}]", m.top_k)
    if m.name == "hf":
        need(bool(m.path), "model.path", "a checkpoint directory for model.name = 'hf'", m.path)
    if m.load_in_4bit:
        need(m.name == "hf", "model.load_in_4bit", "false unless model.name = 'hf'", m.load_in_4bit)
        need(cfg.runtime.device != "cpu", "runtime.device", "auto | cuda with model.load_in_4bit", cfg.runtime.device)
        from hfedmoe.federation.quant import four_bit_problem

        problem = four_bit_problem() if "model.load_in_4bit" not in reported else None
        if problem:
            reported.add("model.load_in_4bit")
            p.append(f"model.load_in_4bit: needs CUDA and bitsandbytes, {problem}")
    if m.name == "scratch-moe" and m.preset in PRESETS:
        pre = PRESETS[m.preset]
        need(m.num_experts == pre.num_experts, "model.num_experts",
             f"{pre.num_experts} (the experts of model.preset = {m.preset!r})", m.num_experts)
        need(m.top_k == pre.top_k, "model.top_k", f"{pre.top_k} (the top-k of model.preset = {m.preset!r})", m.top_k)
    need(m.pretrain_seed >= 0, "model.pretrain_seed", "an integer >= 0", m.pretrain_seed)
    lm_models = ("smollm2-moe", "tiny-lm", "hf", "scratch-moe", "smollm2", "tiny-llama")
    if m.task == "causal-lm":
        need(m.name in lm_models, "model.name", "one of " + " | ".join(lm_models) + " for model.task = 'causal-lm'", m.name)
    else:
        need(m.name not in ("smollm2-moe", "tiny-lm", "smollm2", "tiny-llama"), "model.name", "a classification "
             "model for model.task = 'classification' (smollm2-moe / tiny-lm / smollm2 / tiny-llama need task = "
             "'causal-lm')", m.name)
        need(d.dataset != "healthtweets", "data.dataset", "a labelled dataset for model.task = "
             "'classification' (healthtweets has no labels: task = 'causal-lm')", d.dataset)
    check_adapter(cfg, need)
    need(d.heldout_max_examples >= 1, "data.heldout_max_examples", "an integer >= 1", d.heldout_max_examples)
    if d.dataset == "local":
        need(bool(d.path), "data.path", "a CSV/JSONL/Parquet file for dataset = 'local'", d.path)
    chat_cols = {"data.prompt_column": d.prompt_column, "data.response_column": d.response_column,
                 "data.messages_column": d.messages_column}
    for name, col in chat_cols.items():
        if col:
            need(m.task == "causal-lm" and d.dataset == "local", name,
                 "'' unless model.task = 'causal-lm' and data.dataset = 'local'", col)
    need(bool(d.prompt_column) == bool(d.response_column), "data.response_column" if d.prompt_column
         else "data.prompt_column", "set together with the other of data.prompt_column / data.response_column",
         d.response_column or d.prompt_column)
    need(not (d.messages_column and d.prompt_column), "data.messages_column",
         "'' when data.prompt_column is set (one kind of conversation per file)", d.messages_column)
    need(d.max_examples >= 0, "data.max_examples", "an integer >= 0", d.max_examples)
    need(0.0 < d.test_fraction < 1.0, "data.test_fraction", "a float in (0, 1)", d.test_fraction)
    need(0.0 <= d.val_fraction < 1.0, "data.val_fraction", "a float in [0, 1)", d.val_fraction)
    need(d.num_clients >= 1, "data.num_clients", "an integer >= 1", d.num_clients)
    need(d.clients_per_group >= 1, "data.clients_per_group", "an integer >= 1", d.clients_per_group)
    need(d.alpha > 0, "data.alpha", "a float > 0", d.alpha)
    need(d.min_client_size >= 1, "data.min_client_size", "an integer >= 1", d.min_client_size)
    need(d.shards_per_client >= 1, "data.shards_per_client", "an integer >= 1", d.shards_per_client)
    need(d.max_length >= 4, "data.max_length", "an integer >= 4", d.max_length)
    need(0.0 <= d.public_fraction < 1.0, "data.public_fraction", "a float in [0, 1)", d.public_fraction)
    need(m.router_warmup_steps >= 0, "model.router_warmup_steps", "an integer >= 0", m.router_warmup_steps)
    need(m.router_warmup_lr > 0, "model.router_warmup_lr", "a float > 0", m.router_warmup_lr)
    need(m.head_warmup_steps >= 0, "model.head_warmup_steps", "an integer >= 0", m.head_warmup_steps)
    need(m.head_warmup_lr > 0, "model.head_warmup_lr", "a float > 0", m.head_warmup_lr)
    if m.head_warmup_steps > 0:
        need(d.public_fraction > 0, "data.public_fraction", "a fraction > 0 when model.head_warmup_steps > 0",
             d.public_fraction)
        need(m.task == "classification", "model.task", "classification when model.head_warmup_steps > 0", m.task)
    if m.router_warmup_steps > 0:
        need(d.public_fraction > 0, "data.public_fraction", "a fraction > 0 when model.router_warmup_steps > 0",
             d.public_fraction)
        need(m.name in ("minilm-moe", "tiny-moe"), "model.name",
             "minilm-moe | tiny-moe when model.router_warmup_steps > 0 (warm-up is for MoEfied models)", m.name)
    if m.combine != "straight-through":
        need(m.name in ("minilm-moe", "tiny-moe"), "model.name",
             "minilm-moe | tiny-moe when model.combine is not straight-through", m.name)
    if m.lora_r > 0:
        need("experts" in t.trainable, "train.trainable", "a list with 'experts' when model.lora_r > 0 (LoRA "
             "experts are the trained unit)", t.trainable)
    need(t.local_epochs >= 1, "train.local_epochs", "an integer >= 1", t.local_epochs)
    need(t.local_steps >= 0, "train.local_steps", "an integer >= 0", t.local_steps)
    need(t.min_local_steps >= 0, "train.min_local_steps", "an integer >= 0", t.min_local_steps)
    need(t.batch_size >= 1, "train.batch_size", "an integer >= 1", t.batch_size)
    need(t.eval_batch_size >= 1, "train.eval_batch_size", "an integer >= 1", t.eval_batch_size)
    need(t.lr > 0, "train.lr", "a float > 0", t.lr)
    need(t.dropout == -1 or 0 <= t.dropout < 1, "train.dropout", "-1 (the checkpoint's) or a float in [0, 1)",
         t.dropout)
    need(t.weight_decay >= 0, "train.weight_decay", "a float >= 0", t.weight_decay)
    need(t.loss == "ce" or m.task == "classification", "train.loss",
         "'ce' for model.task = 'causal-lm' (label-count losses need classes)", t.loss)
    bad_parts = [x for x in t.trainable if x not in TRAINABLE_PARTS]
    need(not bad_parts and bool(t.trainable), "train.trainable",
         "a non-empty list of " + ", ".join(TRAINABLE_PARTS), t.trainable)
    need(0.0 <= meth.lam <= 1.0, "method.lam", "a float in [0, 1]", meth.lam)
    need(meth.beta >= 0, "method.beta", "a float >= 0", meth.beta)
    need(0.0 <= meth.tau <= 1.0, "method.tau", "a float in [0, 1]", meth.tau)
    need(meth.aux_weight >= 0, "method.aux_weight", "a float >= 0", meth.aux_weight)
    need(bool(c.profiles), "clients.profiles", "a non-empty list of device profile names", c.profiles)
    try:
        from hfedmoe.core.budgets import DEVICE_PROFILES
    except ImportError:  # pragma: no cover - core is part of the package
        DEVICE_PROFILES = {}
    unknown = [x for x in c.profiles if DEVICE_PROFILES and x not in DEVICE_PROFILES]
    need(not unknown, "clients.profiles", "names from " + ", ".join(sorted(DEVICE_PROFILES)), unknown)
    need(c.memory_scale >= 0, "clients.memory_scale", "a float >= 0", c.memory_scale)
    bad_b = [b for b in c.fixed_budgets if not isinstance(b, int) or not 1 <= b <= m.num_experts]
    need(not bad_b, "clients.fixed_budgets", f"integers in [1, {m.num_experts}]", c.fixed_budgets)
    need(fed.rounds >= 1, "federation.rounds", "an integer >= 1", fed.rounds)
    need(fed.clients_per_round > 0, "federation.clients_per_round", "a fraction in (0, 1] or a count >= 1",
         fed.clients_per_round)
    need(fed.eval_every >= 1, "federation.eval_every", "an integer >= 1", fed.eval_every)
    need(fed.keep_checkpoints >= 0, "federation.keep_checkpoints", "an integer >= 0", fed.keep_checkpoints)
    need(cfg.engine.num_actors >= 1, "engine.num_actors", "an integer >= 1", cfg.engine.num_actors)
    need(cfg.engine.round_timeout_s > 0, "engine.round_timeout_s", "a float > 0", cfg.engine.round_timeout_s)
    need(cfg.engine.connect_timeout_s > 0, "engine.connect_timeout_s", "a float > 0", cfg.engine.connect_timeout_s)
    need(isinstance(cfg.engine.min_clients, int) and cfg.engine.min_clients >= 1, "engine.min_clients",
         "an integer >= 1", cfg.engine.min_clients)
    need(cfg.engine.name == "simulation" or cfg.method.name != "centralized",
         "engine.name", "'simulation' for method.name = 'centralized' (pooled data has no clients to federate)",
         cfg.engine.name)
    need(fed.checkpoint_every >= 1, "federation.checkpoint_every", "an integer >= 1", fed.checkpoint_every)
    need(fed.client_eval_every >= 1, "federation.client_eval_every", "an integer >= 1", fed.client_eval_every)
    need(fed.select_model != "best-val" or d.val_fraction > 0, "data.val_fraction",
         "a fraction > 0 when federation.select_model = 'best-val' (the clients' validation splits choose the round)",
         d.val_fraction)
    need(m.attention_dropout == -1.0 or 0.0 <= m.attention_dropout < 1.0, "model.attention_dropout",
         "-1 (the checkpoint's value) or a float in [0, 1)", m.attention_dropout)
    need(cfg.runtime.threads >= 0, "runtime.threads", "an integer >= 0 (0 = torch's default)", cfg.runtime.threads)
    check_safety(cfg, need)
    need(cfg.engine.name == "simulation" or (not cfg.privacy.enabled and cfg.faults.rate == 0),
         "engine.name", "'simulation' with privacy.enabled or faults.rate > 0 (client-side DP and fault "
         "injection run in the in-process engine only)", cfg.engine.name)
    if p:
        raise HFedMoEError(f"invalid config ({len(p)} problem{'s' if len(p) > 1 else ''}): " + "; ".join(p))
