"""The one codec between the project's objects and Flower records.

* :class:`~hfedmoe.client.ClientUpdate` <-> ``RecordDict`` (what a ClientApp sends back):
  ``experts`` ArrayRecord keyed ``"{layer}/{expert}/{name}"`` (only the slices the client trained),
  ``routers`` ``"{layer}/{name}"``, ``dense`` ``"{param name}"``, ``stats`` (usage, importance,
  trained, selected_counts, each ``[L, E]``), ``meta`` ConfigRecord (client_id, num_examples),
  ``metrics`` MetricRecord.
* the global model -> ArrayRecord (what the server sends): every non-expert tensor of the state dict
  under ``"dense/{key}"`` and the expert slices a client may hold under ``"expert/{l}/{e}/{name}"``
  (all of them, or only the held ones in restrict mode).
* a :class:`~hfedmoe.client.TrainPlan` -> JSON: its data (subsets, restriction, routers on/off);
  a per-batch selector is code, not data: the client rebuilds it from the method options.

Tensors travel as NumPy arrays (``np.save`` bytes, no pickle); bfloat16 is sent as its int16 bits.
Decoding is bit-exact. Malformed records raise :class:`CodecError` naming what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from hfedmoe.client import ClientUpdate, TrainPlan
from hfedmoe.errors import HFedMoEError
from hfedmoe.moe import MoEModel

STATS = ("usage", "importance", "trained", "selected_counts")
_BF16 = "bf16-keys"


class CodecError(HFedMoEError):
    """A record that does not decode into the expected object (the reason is the message)."""


# --- tensors -------------------------------------------------------------------------------


def _put(rec: ArrayRecord, key: str, t: torch.Tensor, bf16: list[str]) -> None:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        bf16.append(key)
        t = t.view(torch.int16)
    rec[key] = Array.from_numpy_ndarray(np.ascontiguousarray(t.numpy()))


def _get(rec: ArrayRecord, key: str, bf16: set[str]) -> torch.Tensor:
    arr = rec[key].numpy()  # np.load of the record's bytes: a fresh, writable array, shared as is
    t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    return t.view(torch.bfloat16) if key in bf16 else t


def _bf16_of(rd: RecordDict) -> set[str]:
    cfg = rd.config_records.get("codec")
    return set(cfg.get(_BF16, [])) if cfg is not None else set()


# --- client updates ------------------------------------------------------------------------


def update_to_record(upd: ClientUpdate) -> RecordDict:
    """Encode a client update (only what it carries: trained experts, routers, dense, statistics)."""
    bf16: list[str] = []
    experts, routers, dense, stats = ArrayRecord(), ArrayRecord(), ArrayRecord(), ArrayRecord()
    for (layer, e), tensors in sorted(upd.experts.items()):
        for name, t in tensors.items():
            _put(experts, f"{layer}/{e}/{name}", t, bf16)
    for layer, tensors in sorted(upd.routers.items()):
        for name, t in tensors.items():
            _put(routers, f"{layer}/{name}", t, bf16)
    for name, t in upd.dense.items():
        _put(dense, name, t, bf16)
    for name in STATS:
        _put(stats, name, getattr(upd, name), bf16)
    if upd.peak_expert_state is not None:  # (L,) most experts holding state at any step
        _put(stats, "peak_expert_state", upd.peak_expert_state, bf16)
    rd = RecordDict()
    rd["experts"], rd["routers"], rd["dense"], rd["stats"] = experts, routers, dense, stats
    rd["meta"] = ConfigRecord({"client_id": int(upd.client_id), "num_examples": int(upd.num_examples),
                               "nonce": str(upd.nonce)})
    rd["metrics"] = MetricRecord({k: float(v) for k, v in upd.metrics.items()})
    rd["codec"] = ConfigRecord({_BF16: bf16} if bf16 else {})
    return rd


def _int_key(part: str, what: str) -> int:
    try:
        return int(part)
    except ValueError:
        raise CodecError(f"{what}: expected an integer index, got {part!r}") from None


def record_to_update(rd: RecordDict) -> ClientUpdate:
    """Decode :func:`update_to_record`'s output; :class:`CodecError` on any missing or bad part."""
    for name in ("experts", "routers", "dense", "stats"):
        if name not in rd.array_records:
            raise CodecError(f"reply: missing ArrayRecord {name!r}")
    if "meta" not in rd.config_records or "metrics" not in rd.metric_records:
        raise CodecError("reply: missing 'meta' ConfigRecord or 'metrics' MetricRecord")
    bf16 = _bf16_of(rd)
    experts: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for key in rd.array_records["experts"]:
        parts = key.split("/", 2)
        if len(parts) != 3:
            raise CodecError(f"experts: expected keys 'layer/expert/name', got {key!r}")
        idx = (_int_key(parts[0], f"experts[{key!r}]"), _int_key(parts[1], f"experts[{key!r}]"))
        experts.setdefault(idx, {})[parts[2]] = _get(rd.array_records["experts"], key, bf16)
    routers: dict[int, dict[str, torch.Tensor]] = {}
    for key in rd.array_records["routers"]:
        parts = key.split("/", 1)
        if len(parts) != 2:
            raise CodecError(f"routers: expected keys 'layer/name', got {key!r}")
        routers.setdefault(_int_key(parts[0], f"routers[{key!r}]"), {})[parts[1]] = _get(
            rd.array_records["routers"], key, bf16)
    dense = {k: _get(rd.array_records["dense"], k, bf16) for k in rd.array_records["dense"]}
    stats = rd.array_records["stats"]
    missing = [s for s in STATS if s not in stats]
    if missing:
        raise CodecError(f"stats: missing {missing}")
    meta = rd.config_records["meta"]
    for k in ("client_id", "num_examples"):
        if not isinstance(meta.get(k), int):
            raise CodecError(f"meta.{k}: expected an integer, got {meta.get(k)!r}")
    return ClientUpdate(
        client_id=int(meta["client_id"]),
        num_examples=int(meta["num_examples"]),
        experts=experts,
        routers=routers,
        dense=dense,
        usage=_get(stats, "usage", bf16),
        importance=_get(stats, "importance", bf16),
        trained=_get(stats, "trained", bf16),
        selected_counts=_get(stats, "selected_counts", bf16),
        metrics={k: float(v) for k, v in rd.metric_records["metrics"].items()},
        peak_expert_state=_get(stats, "peak_expert_state", bf16) if "peak_expert_state" in stats else None,
        nonce=str(meta.get("nonce", "")),
    )


# --- the global model ------------------------------------------------------------------------


def model_to_record(mm: MoEModel, held: Sequence[Sequence[int] | None] | None = None) -> ArrayRecord:
    """The global model as a client receives it: every non-expert tensor, and the experts of
    ``held`` (per layer: expert indices, or None = all; ``held=None``: every expert)."""
    bf16: list[str] = []
    rec = ArrayRecord()
    expert_keys = mm.expert_state_keys()
    for key, t in mm.model.state_dict().items():
        if key not in expert_keys:
            _put(rec, f"dense/{key}", t, bf16)
    for layer in range(mm.num_layers):
        which = held[layer] if held is not None else None
        for e in (range(mm.num_experts) if which is None else which):
            for name, t in mm.get_expert(layer, int(e)).items():
                _put(rec, f"expert/{layer}/{int(e)}/{name}", t, bf16)
    if bf16:
        rec["bf16-keys"] = Array.from_numpy_ndarray(np.array(bf16))
    return rec


def load_model_record(mm: MoEModel, rec: ArrayRecord) -> list[tuple[int, int]]:
    """Write a :func:`model_to_record` record into ``mm``; returns the experts it carried.
    Every non-expert tensor must be present (:class:`CodecError` otherwise)."""
    bf16 = set(rec["bf16-keys"].numpy().tolist()) if "bf16-keys" in rec else set()
    dense, experts = {}, {}
    for key in rec:
        if key == "bf16-keys":
            continue
        kind, _, rest = key.partition("/")
        if kind == "dense":
            dense[rest] = _get(rec, key, bf16)
        elif kind == "expert":
            parts = rest.split("/", 2)
            if len(parts) != 3:
                raise CodecError(f"model: expected 'expert/layer/expert/name', got {key!r}")
            idx = (_int_key(parts[0], key), _int_key(parts[1], key))
            experts.setdefault(idx, {})[parts[2]] = _get(rec, key, bf16)
        else:
            raise CodecError(f"model: unexpected key {key!r}")
    expected = set(mm.model.state_dict()) - mm.expert_state_keys()
    if set(dense) != expected:
        raise CodecError(f"model: non-expert tensors differ (missing {sorted(expected - set(dense))[:3]}, "
                         f"unexpected {sorted(set(dense) - expected)[:3]})")
    with torch.no_grad():
        result = mm.model.load_state_dict(dense, strict=False)
        if result.unexpected_keys:
            raise CodecError(f"model: unexpected keys {result.unexpected_keys[:3]}")
        for (layer, e), tensors in experts.items():
            mm.set_expert(layer, e, tensors)
    return sorted(experts)


# --- plans -----------------------------------------------------------------------------------


def _subsets(x: Sequence[Sequence[int] | None] | None) -> list | None:
    return None if x is None else [None if s is None else [int(i) for i in s] for s in x]


#: The parts of a plan that are code, not data: a client rebuilds them from its own copy of the
#: method (they depend only on the method options, the run seed, the client and the round).
PLAN_RULES = ("selector", "batch_subsets", "grad_selector", "profile", "on_batch")


def plan_to_json(plan: TrainPlan) -> str:
    """The data of a plan; ``rules`` names the callables the client must rebuild."""
    return json.dumps({
        "rules": [name for name in PLAN_RULES if getattr(plan, name) is not None],
        "static_subsets": _subsets(plan.static_subsets),
        "restrict": _subsets(plan.restrict),
        "train_routers": bool(plan.train_routers),
        "budget": plan.budget,
        "profile_batches": int(plan.profile_batches),
    })


def plan_rule(text: str) -> str | None:
    """The callables a serialised plan needs, comma-joined (None: it is pure data)."""
    try:
        rules = json.loads(text)["rules"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"plan: malformed ({exc})") from None
    return ",".join(rules) if rules else None


def plan_from_json(text: str, local: TrainPlan | None) -> TrainPlan:
    """Rebuild the server's plan on the client: its data from ``text``, its callables (when it
    has some) from ``local``, the plan the client's own copy of the method made for the same client
    and round (the rules depend only on the method options, the run seed, the client and the
    round, all of which the client has)."""
    try:
        spec = json.loads(text)
        rules = list(spec["rules"])
        plan = TrainPlan(static_subsets=spec["static_subsets"], restrict=spec["restrict"],
                         train_routers=bool(spec["train_routers"]), budget=spec["budget"],
                         profile_batches=int(spec["profile_batches"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CodecError(f"plan: malformed ({exc})") from None
    for rule in rules:
        if rule not in PLAN_RULES:
            raise CodecError(f"plan: unknown rule {rule!r}, expected one of {PLAN_RULES}")
        if local is None or getattr(local, rule) is None:
            raise CodecError(f"plan: the server's plan needs a {rule}, the client's method has none")
        setattr(plan, rule, getattr(local, rule))
    return plan


# --- sizes -----------------------------------------------------------------------------------


def wire_bytes(obj: Any) -> int:
    """Bytes of ``obj`` (a record or RecordDict) as Flower serialises it for transport: the sum of
    the deflated objects of its tree (arrays are sent in chunks, identical chunks once)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return int(sum(len(o.deflate()) for o in get_all_nested_objects(obj).values()))
