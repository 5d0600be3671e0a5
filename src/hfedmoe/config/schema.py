"""Typed run configuration: the dataclasses (one help text per field) and the one validation pass
that reports every problem at once. Reading, overrides and writing: :mod:`hfedmoe.config.loading`.

Every field carries its help text in ``metadata["help"]``; ``hfedmoe config`` prints every
field with its type, default and help (``--markdown``: the README's table, from the same rows),
and the presets in ``configs/`` use the same names. Dotted overrides (``--set method.beta=0.2``)
address any field. Type errors and value errors are collected in one pass
(:func:`config_from_data`); every message starts with the dotted field name. Range checks live in
:mod:`hfedmoe.config.ranges`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from hfedmoe.config.adapter import check_adapter
from hfedmoe.config.safety import FaultsConfig, PrivacyConfig, UpdatesConfig, check_safety
from hfedmoe.errors import HFedMoEError
from hfedmoe.pretrain.presets import PRESETS


__all__ = [
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "MethodConfig",
    "ClientsConfig",
    "FederationConfig",
    "RuntimeConfig",
    "EngineConfig",
    "RunConfig",
    "validate",
]


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    name: str = _f(
        "minilm-moe",
        "minilm-moe (all-MiniLM-L6-v2 MoEfied), tiny-moe (tiny random MoEfied BERT with the "
        "MiniLM tokenizer, for tests), scratch-moe (the benchmark MoE pretrained here from scratch: "
        "`hfedmoe pretrain --preset NAME`, see model.preset), or hf (any supported HF MoE checkpoint in `path`); "
        "dense models for model.adapter = 'moe': minilm, tiny-bert, smollm2, tiny-llama, hf (a dense checkpoint)",
    )
    preset: str = _f(
        "top2-16",
        "model.name = 'scratch-moe': which pretrained benchmark MoE: top2-16 (Mixtral, 16 experts, top-2) | "
        "switch-32 (Switch-style: 32 experts, top-1, gate = router probability) | test-tiny (tests); "
        "model.num_experts and model.top_k must match it",
    )
    pretrain_seed: int = _f(0, "model.name = 'scratch-moe': the seed the preset was pretrained with")
    path: str = _f("", "local directory of an HF MoE checkpoint (model.name = 'hf')")
    load_in_4bit: bool = _f(
        False,
        "model.name = 'hf': load with bitsandbytes NF4 4-bit Linear layers (frozen; fused experts and "
        "routers stay bfloat16 and train); needs CUDA and the bitsandbytes package; untested here (no GPU)",
    )
    num_experts: int = _f(8, "experts per MoE layer (MoEfication)")
    top_k: int = _f(2, "experts each token is routed to")
    tiny_hidden: int = _f(36, "hidden size of the tiny model (model.name = 'tiny-moe')")
    tiny_layers: int = _f(2, "layers of the tiny model")
    attention_dropout: float = _f(
        -1.0,
        "attention-probability dropout while training: -1 = the checkpoint's own value (MiniLM: 0.1); "
        "0 turns it off, which lets PyTorch's SDPA use its fused kernel (dropout forces the slower "
        "math kernel on CPU: 0.91x step time measured without it)",
    )
    combine: str = _f(
        "straight-through",
        "MoEfied models: how the top-k experts are combined: straight-through (weight 1, router gets "
        "the gradient of p) | topk-prob (Eq. 2: renormalised top-k router probabilities, times k)",
    )
    router_warmup_steps: int = _f(
        0,
        "MoEfied models: steps of router warm-up before federation, on the public split "
        "(data.public_fraction, unlabeled use): routers distilled towards the experts with the largest "
        "output norm per token (+ load balancing) so routing is decisive; 0 = off",
    )
    router_warmup_lr: float = _f(1e-2, "learning rate of the router warm-up")
    head_warmup_steps: int = _f(
        0,
        "classification: steps of training the task head (classifier and pooler) on the public split's "
        "labels before federation (a labelled public set on the server), after the router warm-up; "
        "with train.trainable without 'head' the head then stays fixed and only experts and routers "
        "adapt; 0 = off",
    )
    head_warmup_lr: float = _f(1e-3, "learning rate of the head warm-up")
    task: str = _f(
        "classification",
        "classification (sequence classification, accuracy) | causal-lm (next-token loss on the "
        "text with padding and prompt tokens masked, perplexity); causal-lm models: smollm2-moe, "
        "tiny-lm (tiny random Mixtral with the SmolLM2 tokenizer, for tests), hf (`path`)",
    )
    upcycle: str = _f(
        "copy",
        "smollm2-moe: copy (every expert a copy of the whole FFN: the dense function at step 0) | "
        "split (fine-grained experts: the FFN's neurons split into num_experts experts)",
    )
    lora_r: int = _f(
        0,
        "LoRA experts: rank r of the PEFT LoRA put on every fused expert tensor (target_parameters); "
        "per-expert adapter slices are then what clients select, train, upload and the server aggregates "
        "(product mean re-factorised by SVD). 0 = off: full expert fine-tuning",
    )
    lora_alpha: float = _f(16.0, "LoRA experts: lora_alpha (the update is scaled by lora_alpha / lora_r)")
    adapter: str = _f(
        "none",
        "none | moe: sparse MoE adapters on a frozen DENSE model (FFT-MoE, docs/fft-moe.md): every FFN gets a "
        "parallel adapter of model.num_experts experts (d -> adapter_rank -> d, zero-initialised output) and a "
        "top-model.top_k router; the adapter experts are then what clients select, train and upload. Dense models: "
        "minilm, tiny-bert (classification), smollm2, tiny-llama (causal-lm), hf with a dense checkpoint",
    )
    adapter_rank: int = _f(8, "model.adapter = 'moe': hidden width r of each adapter expert (d -> r -> d)")
    adapter_layers: list = _f(
        [],
        "model.adapter = 'moe': indices of the layers whose FFN gets an adapter ([] = every layer); "
        "the other FFNs stay frozen",
    )


@dataclass
class DataConfig:
    dataset: str = _f(
        "vader",
        "vader | sms_spam | trec | bbc | local | healthtweets (causal-lm) | domains8 (8 domains x 600 texts, "
        "label = domain, group = domain; disjoint from the scratch-moe pretraining text)",
    )
    path: str = _f("", "local CSV / TSV / JSON Lines / JSON array / Parquet file, format read from the content "
                       "(dataset = 'local')")
    text_column: str = _f("text", "text column of a local file")
    label_column: str = _f("label", "label column of a local file")
    group_column: str = _f("", "column for the natural split of a local file (domain, outlet, author)")
    drop_invalid: bool = _f(
        False,
        "drop rows of a local file whose text is empty/whitespace or whose text/label/group cell is null "
        "(counted in the log); false = such a row is an error naming its row number",
    )
    min_group_size: int = _f(
        1,
        "natural splits: groups with fewer training examples than this are merged into one 'other' client "
        "(or dropped when even merged they stay below it); said in the log",
    )
    max_clients: int = _f(
        0,
        "natural splits: keep at most this many groups (the largest; the rest merge into 'other'); 0 = no cap",
    )
    max_examples: int = _f(0, "use a stratified random subset of this many examples (0 = all)")
    test_fraction: float = _f(0.2, "held-out global test set, fixed per run seed")
    val_fraction: float = _f(0.1, "per-client validation split")
    partition: str = _f(
        "natural-dirichlet",
        "natural (one client per group) | dirichlet (label skew, concentration data.alpha) | iid | shards | "
        "natural-dirichlet (each group split by label skew into clients_per_group clients)",
    )
    num_clients: int = _f(8, "number of clients for dirichlet | iid | shards (natural schemes: one client per group, or clients_per_group per group)")
    clients_per_group: int = _f(2, "natural-dirichlet: clients per group, label skew inside a group")
    alpha: float = _f(0.5, "Dirichlet concentration for label skew (smaller = more skew)")
    shards_per_client: int = _f(2, "shards partition: shards per client")
    min_client_size: int = _f(20, "Dirichlet partitions are redrawn until every client has this many examples")
    max_length: int = _f(64, "maximum tokens per example")
    public_fraction: float = _f(
        0.0,
        "fraction of the non-test data held out as a public split (no client trains on it) for the "
        "router warm-up; 0 = none",
    )
    prompt: str = _f(
        "",
        "causal-lm: text put before every example and masked out of the loss; '{group}' is replaced "
        "by the example's group (e.g. the outlet)",
    )
    heldout: str = _f("", "causal-lm: held-out corpus for perplexity before/after ('' | wikitext2)")
    heldout_max_examples: int = _f(64, "causal-lm: held-out paragraphs evaluated (first N of WikiText-2 valid)")
    layout: str = _f(
        "truncate",
        "causal-lm: documents -> sequences of max_length tokens: truncate (each cut, its tail lost) | chunk "
        "(each cut into consecutive pieces) | pack (a split's documents concatenated, cut into blocks); the "
        "share of tokens kept is logged and reported",
    )
    prompt_column: str = _f("", "causal-lm, local file: instruction column (with data.response_column: one user "
                                "and one assistant turn per row, rendered with data.chat_template)")
    response_column: str = _f("", "causal-lm, local file: response column (the assistant turn)")
    messages_column: str = _f("", "causal-lm, local file: chat column, a list of {role, content} messages per row "
                                  "(roles system | user | assistant)")
    chat_template: str = _f("tokenizer", "causal-lm, instruction/chat data: tokenizer (its chat template; an error "
                                         "when it has none) | plain ('User: ...\\nAssistant: ...' with bos/eos)")
    loss_on: str = _f("response", "causal-lm, instruction/chat data: response (loss on assistant turns only, the "
                                  "rest labelled -100) | all (every token)")


@dataclass
class TrainConfig:
    local_epochs: int = _f(1, "local epochs per round (ignored when local_steps > 0)")
    local_steps: int = _f(0, "local optimizer steps per round (0 = use local_epochs)")
    batch_size: int = _f(16, "local batch size")
    lr: float = _f(5e-4, "learning rate")
    optimizer: str = _f("adamw", "adamw | sgd")
    weight_decay: float = _f(0.01, "weight decay")
    momentum: float = _f(0.9, "SGD momentum")
    trainable: list = _f(
        ["experts", "routers", "head"],
        "parts trained locally: experts, routers, head, attention, embeddings, norms",
    )
    eval_batch_size: int = _f(64, "batch size for evaluation")
    dropout: float = _f(
        -1.0,
        "hidden dropout while training (the checkpoint's hidden_dropout_prob / resid / FFN dropout "
        "modules): -1 = the checkpoint's own value; 0 turns it off (a CPU step is then faster, "
        "benchmarks/RESULTS.md)",
    )
    foreach: bool = _f(True, "AdamW/SGD over all trained tensors at once (foreach kernels), else per tensor")
    gradient_checkpointing: bool = _f(
        False, "recompute each transformer layer's activations in backward instead of keeping them "
        "(less activation memory, about one more forward of compute); transformers models only",
    )
    prox_mu: float = _f(
        0.0, "FedProx: weight mu of the proximal term mu/2 ||w - w_global||^2 on the trained parameters; 0 = off")
    loss: str = _f(
        "ce",
        "classification loss of local training: ce | logit-adjusted (logits + log of the client's own "
        "label frequencies, smoothed: absent classes are not pushed down) | balanced (cross-entropy "
        "weighted by the inverse of the client's label counts)",
    )


@dataclass
class MethodConfig:
    name: str = _f(
        "hfedmoe",
        "hfedmoe | fedavg | fedavg-drop | fedmoe | flux-freq | flex-moe | fft-moe | random (redrawn per batch) | "
        "random-round (drawn once per client-round) | centralized | bounds oracle | fedavg-full | fedavg-fit | "
        "ablations hfedmoe-no-ib | hfedmoe-avg | hfedmoe-uniform-gate | hfedmoe-literal | hfedmoe-restrict | "
        "hfedmoe-token",
    )
    lam: float = _f(0.5, "lambda: weight of cumulative vs specific importance (Eq. 5)")
    beta: float = _f(0.1, "information-bottleneck trade-off beta (Eq. 14); 0 = no-IB ablation")
    tau: float = _f(0.02, "usage threshold tau for sparse aggregation (Eqs. 17-21)")
    budget_scope: str = _f("layer", "expert budget counted per layer ('layer') or over the model ('model')")
    gate_weights: str = _f("normalized", "router aggregation weights: normalized | paper-literal")
    grad_mode: str = _f("no_grad", "unselected experts: no_grad (no backward at all) | detach")
    pooling: str = _f("sequence", "what a 'sample' of Eqs. 3-5 and 14 is: sequence (router probabilities averaged "
                      "over each sequence's real tokens first; the paper's batch of B samples) | token (ablation)")
    ib_scale: str = _f("raw", "scale of Eq. 14's IB term: raw (s_b - beta*KL) | normalised (KL rescaled by "
                       "std(s_b)/std(KL) over the batch's routed experts, so beta=1 weighs it like s_b)")
    aux_weight: float = _f(0.01, "fft-moe: weight of the auxiliary balance loss over each client's active experts "
                                 "(docs/fft-moe.md); 0 = off")


@dataclass
class ClientsConfig:
    profiles: list = _f(
        ["phone-flagship", "jetson-orin-nano-8gb", "jetson-agx-xavier-16gb", "jetson-agx-xavier-32gb"],
        "device profiles (hfedmoe.core.budgets.DEVICE_PROFILES), cycled over the clients",
    )
    memory_scale: float = _f(
        0.0,
        "multiply every profile's memory by this to emulate caps scaled to the model "
        "(like the paper's 12-32 GB caps); 0 = auto: the largest profile holds the full training state",
    )
    fixed_budgets: list = _f([], "override: expert budget per client (cycled); empty = from profiles")


@dataclass
class FederationConfig:
    rounds: int = _f(10, "communication rounds")
    clients_per_round: float = _f(1.0, "fraction (<= 1) or count (> 1) of clients sampled per round")
    eval_every: int = _f(1, "evaluate the global model on the test set every N rounds")
    checkpoint_every: int = _f(1, "write a checkpoint every N rounds (the last round always)")
    client_eval_every: int = _f(
        1, "evaluate the global model on every client's validation split every N rounds (and at the last round)"
    )
    keep_checkpoints: int = _f(2, "keep only the newest N checkpoints (0 = keep all; resume needs only the newest)")
    server_optimizer: str = _f(
        "none",
        "server step on the aggregated update (after the method's own aggregation; parameters nobody "
        "updated stay unchanged): none | avgm (FedAvgM) | adam (FedAdam) | yogi (FedYogi)",
    )
    server_lr: float = _f(0.0, "server learning rate; 0 = the optimizer's default (avgm 1.0, adam/yogi 0.01)")
    server_momentum: float = _f(0.9, "avgm: server momentum")
    server_beta1: float = _f(0.9, "adam/yogi: first-moment decay")
    server_beta2: float = _f(0.99, "adam/yogi: second-moment decay")
    server_tau: float = _f(1e-3, "adam/yogi: adaptivity tau added to sqrt(v)")


@dataclass
class RuntimeConfig:
    threads: int = _f(
        1,
        "torch intra-op threads of this process while it runs (0 = torch's default, all cores). 1 is "
        "fastest on small shared machines: a step at 2 threads was 7.3x slower next to other load",
    )
    device: str = _f("auto", "auto (cuda when available, else cpu) | cpu | cuda")
    dtype: str = _f(
        "float32",
        "compute dtype of forward passes: float32 | bfloat16 | float16 (mixed precision: autocast "
        "over float32 master weights, float32 gradients and optimizer state, aggregation in float32; "
        "float16 adds a gradient scaler). Sensible on GPUs; slow on most CPUs",
    )


@dataclass
class EngineConfig:
    name: str = _f(
        "simulation",
        "simulation (in-process, the default and the reference) | flower-sim (the same run through "
        "Flower's Simulation Engine on Ray: one ClientApp per client, records over Flower messages)",
    )
    num_actors: int = _f(1, "flower-sim: Ray actors running ClientApps at the same time (num_cpus=1 each)")
    round_timeout_s: float = _f(
        600.0, "Flower: seconds the server waits for a round's replies; a client that has not replied by "
        "then counts as failed for the round",
    )
    connect_timeout_s: float = _f(
        300.0, "Flower: seconds the server waits for one node per client at start-up (and for their "
        "first reply); it goes on with the nodes it has when at least engine.min_clients answered",
    )
    min_clients: int = _f(
        1, "Flower: the fewest clients with a live, answering node the run goes on with; below it the "
        "run stops with an error (a failed client only misses its rounds)",
    )


@dataclass
class RunConfig:
    seed: int = _f(0, "seed for partitions, sampling, model building and training")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.name": ("minilm-moe", "tiny-moe", "hf", "smollm2-moe", "tiny-lm", "scratch-moe", "minilm", "tiny-bert",
                   "smollm2", "tiny-llama"),
    "model.preset": tuple(PRESETS),
    "model.adapter": ("none", "moe"),
    "data.dataset": ("vader", "sms_spam", "trec", "bbc", "local", "healthtweets", "domains8"),
    "data.partition": ("natural", "dirichlet", "iid", "shards", "natural-dirichlet"),
    "train.optimizer": ("adamw", "sgd"),
    "train.loss": ("ce", "logit-adjusted", "balanced"),
    "federation.server_optimizer": ("none", "avgm", "adam", "yogi"),
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
    need(m.attention_dropout == -1.0 or 0.0 <= m.attention_dropout < 1.0, "model.attention_dropout",
         "-1 (the checkpoint's value) or a float in [0, 1)", m.attention_dropout)
    need(cfg.runtime.threads >= 0, "runtime.threads", "an integer >= 0 (0 = torch's default)", cfg.runtime.threads)
    check_safety(cfg, need)
    need(cfg.engine.name == "simulation" or (not cfg.privacy.enabled and cfg.faults.rate == 0),
         "engine.name", "'simulation' with privacy.enabled or faults.rate > 0 (client-side DP and fault "
         "injection run in the in-process engine only)", cfg.engine.name)
    if p:
        raise HFedMoEError(f"invalid config ({len(p)} problem{'s' if len(p) > 1 else ''}): " + "; ".join(p))
