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
    """All complete rows. A torn last row (a kill in the middle of a write: ``{...`` without a newline
    after it) is ignored; anything else that is not a row (binary data, invalid JSON, a row without an integer
    ``round``) is an HFedMoEError naming the line, never silently dropped."""
    from hfedmoe.errors import HFedMoEError

    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            if i == len(lines) - 1 and raw.startswith(b"{"):
                break  # the torn last row of a kill
            what = "undecodable bytes" if isinstance(exc, UnicodeDecodeError) else "invalid JSON"
            raise HFedMoEError(f"{path}: line {i + 1}: expected one JSON metrics row per line, got {what} "
                               "(restore the file, or start over with --overwrite)") from None
        rnd = row.get("round") if isinstance(row, dict) else None
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
            raise HFedMoEError(f"{path}: line {i + 1}: expected a metrics row with an integer 'round' >= 0, "
                               f"got {type(row).__name__} with round {rnd!r}")
        rows.append(row)
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
