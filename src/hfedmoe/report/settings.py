"""The key settings of a run, as the report lists them: what produced these numbers."""

from __future__ import annotations

import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def package_version() -> str:
    try:
        return metadata.version("hfedmoe")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def git_commit() -> str:
    """The commit of the source tree the package runs from (``-dirty`` when it has local edits);
    ``$HFEDMOE_COMMIT`` when set (a run from a copied source tree); "unknown" outside a git checkout."""
    if os.environ.get("HFEDMOE_COMMIT"):
        return os.environ["HFEDMOE_COMMIT"]
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=src, capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=src,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def key_settings(cfg: Any, num_examples: int, num_clients: int) -> dict[str, Any]:
    """Partition and alpha, lambda/beta/tau, optimiser and lr, examples, seed, version and commit."""
    d, t, m = cfg.data, cfg.train, cfg.method
    partition = d.partition
    if d.partition in ("dirichlet", "natural-dirichlet"):
        partition += f", alpha {d.alpha:g}"
    if d.partition == "natural-dirichlet":
        partition += f", {d.clients_per_group} clients per group"
    if d.partition == "shards":
        partition += f", {d.shards_per_client} shards per client"
    local = f"{t.local_steps} steps" if t.local_steps else f"{t.local_epochs} epoch(s)"
    if t.min_local_steps and not t.local_steps:
        local += f" (at least {t.min_local_steps} steps)"
    f = cfg.federation
    server = f.server_optimizer if f.server_optimizer == "none" else f"{f.server_optimizer}, lr {f.server_lr or 'auto'}"
    per_round = "all" if f.clients_per_round == 1 else (
        f"{f.clients_per_round:.0%}" if f.clients_per_round < 1 else f"{int(f.clients_per_round)}")
    return {
        "method": m.name,
        "partition": f"{partition} ({num_clients} client{'' if num_clients == 1 else 's'})",
        "lambda / beta / tau": f"{m.lam:g} / {m.beta:g} / {m.tau:g}",
        "optimizer, lr": f"{t.optimizer}, {t.lr:g}",
        "local loss, FedProx mu, server optimizer": f"{t.loss}, {t.prox_mu:g}, {server}",
        "local training": f"{local}, batch {t.batch_size}, trainable {', '.join(t.trainable)}",
        "examples": f"{num_examples} (max_examples {d.max_examples or 'all'}), max_length {d.max_length}",
        "rounds": f.rounds,
        "clients per round": per_round,
        "seed": cfg.seed,
        "hfedmoe version, commit": f"{package_version()}, {git_commit()}",
    }


def data_context(cfg: Any, fed: Any) -> dict[str, Any]:
    """What the report says about the data: where it came from (path and columns of a local file),
    the classes with their example counts, each class's test share, and the data warnings."""
    import numpy as np

    d = cfg.data
    source = ""
    if d.dataset == "local":
        cols = f"text column '{d.text_column}', label column '{d.label_column}'"
        source = f"{d.path}; {cols}" + (f", group column '{d.group_column}'" if d.group_column else "")
    out: dict[str, Any] = {"data_source": source, "data_warnings": list(getattr(fed, "warnings", []))}
    if cfg.model.task == "classification":
        names = list(fed.dataset.label_names)
        counts = np.bincount(fed.dataset.labels, minlength=len(names))
        out["classes"] = ", ".join(f"{n} ({c})" for n, c in zip(names, counts.tolist()))
        test = np.bincount(fed.dataset.labels[fed.test_idx], minlength=len(names))
        out["test_label_share"] = (test / max(int(test.sum()), 1)).tolist()
    return out
