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
    return {
        "method": m.name,
        "partition": f"{partition} ({num_clients} clients)",
        "lambda / beta / tau": f"{m.lam:g} / {m.beta:g} / {m.tau:g}",
        "optimizer, lr": f"{t.optimizer}, {t.lr:g}",
        "local training": f"{local}, batch {t.batch_size}, trainable {', '.join(t.trainable)}",
        "examples": f"{num_examples} (max_examples {d.max_examples or 'all'}), max_length {d.max_length}",
        "rounds, clients per round": f"{cfg.federation.rounds}, {cfg.federation.clients_per_round:g}",
        "seed": cfg.seed,
        "hfedmoe version, commit": f"{package_version()}, {git_commit()}",
    }
