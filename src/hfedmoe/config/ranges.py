"""Range checks of a RunConfig: finite floats, sane maxima, model-specific consistency.

:func:`range_problems` is called by :func:`hfedmoe.config.schema.validate` before its own checks;
each problem is ``(dotted field, "expected ..., got ...")`` and a field is reported at most once.
Generic rules cover every field of every section, including fields added later:

- a float field must be finite (``inf``/``nan`` pass ``x > 0`` style checks and poison training);
- an int field must fit a signed 64-bit integer (what TOML and ``tomli_w`` round-trip).

Specific maxima below keep one typo (``federation.rounds=1000000000000``, ``model.num_experts=1000``)
from running for days, writing checkpoints without bound or exhausting memory.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, get_type_hints

#: numpy's ``default_rng`` and torch's ``manual_seed`` accept far more; 2**32 is the common range of
#: seeds every library in the stack (numpy legacy RandomState included) takes without wrapping.
SEED_LIMIT = 2**32
INT64_MAX = 2**63 - 1
#: Position limit of the BERT/MiniLM models built here (``max_position_embeddings``).
BERT_MAX_POSITIONS = 512
#: (dotted field, inclusive minimum, inclusive maximum) for integer fields.
INT_RANGES: tuple[tuple[str, int, int], ...] = (
    ("model.num_experts", 2, 256),
    ("model.tiny_hidden", 4, 4096),
    ("model.tiny_layers", 1, 48),
    ("model.lora_r", 0, 4096),
    ("model.adapter_rank", 1, 65_536),
    ("data.max_examples", 0, 100_000_000),
    ("data.num_clients", 1, 100_000),
    ("data.clients_per_group", 1, 1_000),
    ("data.shards_per_client", 1, 10_000),
    ("data.min_client_size", 1, 1_000_000),
    ("data.min_group_size", 1, 1_000_000),
    ("data.max_clients", 0, 100_000),
    ("data.max_length", 4, 8192),
    ("train.local_epochs", 1, 1_000),
    ("train.local_steps", 0, 1_000_000),
    ("train.min_local_steps", 0, 1_000_000),
    ("train.batch_size", 1, 65_536),
    ("train.eval_batch_size", 1, 65_536),
    ("federation.rounds", 1, 100_000),
    ("federation.eval_every", 1, 100_000),
    ("federation.checkpoint_every", 1, 100_000),
    ("federation.keep_checkpoints", 0, 100_000),
)
#: (dotted field, minimum, maximum, left bound open?, right bound open?) for float fields.
FLOAT_RANGES: tuple[tuple[str, float, float, bool, bool], ...] = (
    ("data.alpha", 0.0, 1e6, True, False),
    ("model.lora_alpha", 0.0, 1e6, True, False),
    ("train.lr", 0.0, 10.0, True, False),
    ("train.weight_decay", 0.0, 10.0, False, False),
    ("train.momentum", 0.0, 1.0, False, True),
    ("method.beta", 0.0, 1e6, False, False),
    ("method.aux_weight", 0.0, 1e6, False, False),
    ("clients.memory_scale", 0.0, 1e6, False, False),
    ("federation.clients_per_round", 0.0, 100_000.0, True, False),
    ("train.prox_mu", 0.0, 1e6, False, False),
    ("federation.server_lr", 0.0, 100.0, False, False),
    ("federation.server_momentum", 0.0, 1.0, False, True),
    ("federation.server_beta1", 0.0, 1.0, False, True),
    ("federation.server_beta2", 0.0, 1.0, False, True),
    ("federation.server_tau", 0.0, 1e3, True, False),
)


def _fields(cfg: Any) -> list[tuple[str, Any, Any]]:
    """(dotted name, value, annotated type) of every leaf field of a RunConfig."""
    out = []
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sub_hints = get_type_hints(type(value))
            out += [(f"{f.name}.{g.name}", getattr(value, g.name), sub_hints[g.name])
                    for g in dataclasses.fields(value)]
        else:
            out.append((f.name, value, hints[f.name]))
    return out


def _get(cfg: Any, dotted: str) -> Any:
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def range_problems(cfg: Any, skip: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Every range problem of ``cfg`` as ``(dotted field, message)``; fields in ``skip`` are not checked."""
    out: list[tuple[str, str]] = []
    seen = set(skip)

    def bad(name: str, expected: str, actual: Any) -> None:
        if name not in seen:
            seen.add(name)
            text = repr(actual)
            out.append((name, f"expected {expected}, got {text if len(text) <= 80 else text[:77] + '...'}"))

    for name, value, typ in _fields(cfg):
        if typ is float and isinstance(value, float) and not math.isfinite(value):
            bad(name, "a finite number", value)
        elif typ is int and isinstance(value, int) and not -INT64_MAX <= value <= INT64_MAX:
            bad(name, "an integer within 64 bits", value)
        elif typ is list and isinstance(value, list):
            for item in value:
                if isinstance(item, float) and not math.isfinite(item):
                    bad(name, "finite numbers", value)

    seed = getattr(cfg, "seed", 0)
    if not 0 <= seed < SEED_LIMIT:
        bad("seed", f"an integer in [0, 2^32) = [0, {SEED_LIMIT - 1}]", seed)
    for name, lo, hi in INT_RANGES:
        value = _get(cfg, name)
        if isinstance(value, int) and not lo <= value <= hi:
            bad(name, f"an integer in [{lo}, {hi}]", value)
    for name, lo, hi, lo_open, hi_open in FLOAT_RANGES:
        value = _get(cfg, name)
        if not isinstance(value, float) or name in seen:
            continue
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        if not ok:
            bad(name, f"a number in {_interval(lo, hi, lo_open, hi_open)}", value)

    m, d, fed = cfg.model, cfg.data, cfg.federation
    k = fed.clients_per_round
    if isinstance(k, float) and math.isfinite(k) and k > 1 and k != int(k):
        bad("federation.clients_per_round", "a fraction in (0, 1] or a whole count >= 1", k)
    if m.name in ("minilm-moe", "tiny-moe", "minilm", "tiny-bert") and d.max_length > BERT_MAX_POSITIONS:
        bad("data.max_length", f"an integer <= {BERT_MAX_POSITIONS} (the position limit of {m.name})",
            d.max_length)
    if m.name in ("tiny-moe", "tiny-bert", "tiny-llama"):
        heads = 3 if m.tiny_hidden % 3 == 0 else 2
        if m.tiny_hidden % heads:
            bad("model.tiny_hidden", "a multiple of 2 or 3 (the tiny model's attention heads)", m.tiny_hidden)
        elif m.name == "tiny-moe" and m.tiny_hidden * 4 < m.num_experts:
            bad("model.tiny_hidden", f"4 x tiny_hidden >= model.num_experts = {m.num_experts} "
                "(each expert needs at least one FFN neuron)", m.tiny_hidden)
    if m.name == "minilm-moe" and 1536 % m.num_experts:
        bad("model.num_experts", "a divisor of 1536 (MiniLM's FFN width: 2, 3, 4, 6, 8, 12, 16, ...)",
            m.num_experts)
    budgets = getattr(cfg.clients, "fixed_budgets", [])
    if any(isinstance(b, bool) for b in budgets):
        bad("clients.fixed_budgets", "integers", budgets)
    names = getattr(cfg.clients, "profiles", [])
    if any(not isinstance(x, str) for x in names):
        bad("clients.profiles", "a list of profile names (strings)", names)
    trainable = getattr(cfg.train, "trainable", [])
    if any(not isinstance(x, str) for x in trainable):
        bad("train.trainable", "a list of part names (strings)", trainable)
    return out
