"""What a resume may change: the checkpoint records the run's resolved config (and its hash), and a
resume with a different config is refused, listing the fields, unless each changed field is one
the caller explicitly allowed and that cannot change the rounds already run (:data:`SAFE_CHANGES`).

A hand-edited ``config.toml`` (another lr, seed, model or method) would otherwise resume silently
into a run whose history was made with other settings, or, when the model no longer matches,
discard every checkpoint and start over.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from typing import Any

from hfedmoe.config import config_to_dict
from hfedmoe.errors import HFedMoEError

# Fields a resume may change when asked: how long the run goes on and how often it evaluates or
# checkpoints, resources and timeouts. Nothing that shapes the model, data, training or aggregation.
SAFE_CHANGES = frozenset({
    "federation.rounds", "federation.eval_every", "federation.client_eval_every",
    "federation.checkpoint_every", "federation.keep_checkpoints", "runtime.threads",
    "train.eval_batch_size", "engine.round_timeout_s", "engine.num_actors",
})


def config_record(cfg: Any) -> dict[str, Any]:
    """The resolved config as it is stored in a checkpoint (JSON types) with its SHA-256."""
    data = json.loads(json.dumps(config_to_dict(cfg), sort_keys=True))
    return {"config": data, "config_hash": _hash(data)}


def _hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_changes(stored: dict[str, Any], cfg: Any) -> list[str]:
    """Dotted fields whose value in ``cfg`` differs from the stored config, sorted."""
    now, before = _flat(config_record(cfg)["config"]), _flat(stored)
    return sorted(k for k in set(now) | set(before) if now.get(k, "<absent>") != before.get(k, "<absent>"))


def check_allow_change(fields: Collection[str]) -> None:
    """``--allow-change``: only fields of :data:`SAFE_CHANGES`."""
    unsafe = sorted(set(fields) - SAFE_CHANGES)
    if unsafe:
        raise HFedMoEError(f"--allow-change: expected fields from {', '.join(sorted(SAFE_CHANGES))}, got "
                           f"{', '.join(unsafe)} (a change that alters training needs a new run)")


def check_resume_config(state: dict[str, Any], cfg: Any, allow: Collection[str], where: str) -> None:
    """Refuse (HFedMoEError, nothing changed) when ``cfg`` differs from the checkpoint's config in a
    field not in ``allow``. A checkpoint without a recorded config (older runs) is not checked."""
    stored = state.get("config")
    if not isinstance(stored, dict):
        return
    if state.get("config_hash") == config_record(cfg)["config_hash"]:
        return
    changed = config_changes(stored, cfg)
    refused = [f for f in changed if f not in allow]
    if refused:
        before = _flat(stored)
        now = _flat(config_record(cfg)["config"])
        shown = ", ".join(f"{f} ({before.get(f, '<absent>')!r} -> {now.get(f, '<absent>')!r})" for f in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        safe = [f for f in refused if f in SAFE_CHANGES]
        hint = (f"; allow with --allow-change {' --allow-change '.join(safe)}" if safe and len(safe) == len(refused)
                else "; a change that alters training needs a new run (another --out)")
        raise HFedMoEError(f"{where}: the config differs from the one the checkpoint was made with: "
                           f"{shown}{more}; nothing was changed{hint}")
