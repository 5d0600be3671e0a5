"""metrics.jsonl: one JSON object per round per method, appended and flushed as rounds finish."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REQUIRED_KEYS = (
    "round", "method", "test_accuracy", "test_loss", "train_loss", "sim_time_s", "wall_time_s",
    "upload_bytes", "download_bytes", "failed_clients",
)


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"metrics row: missing keys {missing}")
    with open(path, "a") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete rows (a torn last line from a kill is ignored)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def truncate_metrics(path: Path, last_round: int) -> list[dict[str, Any]]:
    """Keep only rows with ``round <= last_round`` (after a resume from that checkpoint)."""
    rows = [r for r in read_metrics(path) if r["round"] <= last_round]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as fh:
        for r in rows:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return rows
