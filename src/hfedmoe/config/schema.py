"""Typed run configuration: the dataclasses (one help text per field) and the one validation pass
that reports every problem at once. Reading, overrides and writing: :mod:`hfedmoe.config.loading`.

Every field carries its help text in ``metadata["help"]``; ``hfedmoe config`` prints every
field with its type, default and help (``--markdown``: the table of docs/config.md, from the same rows),
and the presets in ``configs/`` use the same names. Dotted overrides (``--set method.beta=0.2``)
address any field. Type errors and value errors are collected in one pass
(:func:`config_from_data`); every message starts with the dotted field name. Range checks live in
:mod:`hfedmoe.config.ranges`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


from hfedmoe.config.safety import FaultsConfig, PrivacyConfig, UpdatesConfig


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
    min_local_steps: int = _f(
        0, "at least this many local optimizer steps per round: a client whose local_epochs give fewer "
        "repeats its data (label skew with small clients needs the local work, docs/label-skew.md); 0 = off; "
        "ignored when local_steps > 0")
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
    dispatch: str = _f(
        "auto",
        "expert dispatch of the fused experts while training: loop (per-expert loop, one device read per "
        "MoE layer and step) | static (sort + grouped matmul over the budget's expert slots, one device "
        "read per step whatever the layers; docs/gpu.md) | auto (static on CUDA with runtime.dtype "
        "bfloat16, else loop)",
    )
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
    select_model: str = _f(
        "last",
        "the model the run ends with: last (the last round's) | best-val (the evaluated round with the best "
        "client validation score: accuracy pooled over all validation examples, or mean perplexity; kept in "
        "checkpoints/best; clients are then evaluated at every evaluated round)",
    )
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


# the checks live in their own module; re-exported here, where callers have always found them
from hfedmoe.config.checks import CHOICES, TRAINABLE_PARTS, _short, validate  # noqa: E402,F401
