"""Atomic checkpoints: ``checkpoints/round_<N>/`` holds the global model (safetensors) and the
server state (JSON). Each is written into a temporary folder and renamed into place, so a kill at
any moment leaves the last complete checkpoint usable."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_ROUND_DIR = re.compile(r"^round_(\d+)$")
MODEL_FILE = "model.safetensors"
STATE_FILE = "server_state.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: Path, round_idx: int, state_dict: dict[str, torch.Tensor], server_state: dict[str, Any]) -> Path:
    """Write ``root/round_<round_idx>`` atomically and return its path."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round_{round_idx}"
    tmp = root / f".round_{round_idx}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # Shared storage (tied weights) cannot be saved twice by safetensors: save contiguous clones,
    # always from CPU memory (a GPU run's checkpoint loads anywhere).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(tmp / MODEL_FILE))
    with open(tmp / STATE_FILE, "w") as fh:
        json.dump(server_state, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    return final


def complete_rounds(root: Path) -> list[int]:
    """Rounds with a complete checkpoint (both files present), ascending."""
    if not root.is_dir():
        return []
    rounds = []
    for p in root.iterdir():
        m = _ROUND_DIR.match(p.name)
        if m and (p / MODEL_FILE).is_file() and (p / STATE_FILE).is_file():
            rounds.append(int(m.group(1)))
    return sorted(rounds)


def load_checkpoint(root: Path, round_idx: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    d = root / f"round_{round_idx}"
    tensors = load_file(str(d / MODEL_FILE), device="cpu")  # load_state_dict copies onto the model's device
    with open(d / STATE_FILE) as fh:
        state = json.load(fh)
    return tensors, state


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (``keep`` = 0 keeps everything).

    Called only after a newer checkpoint is complete, so the newest one is never at risk.
    """
    if keep <= 0:
        return
    for r in complete_rounds(root)[:-keep]:
        shutil.rmtree(root / f"round_{r}", ignore_errors=True)
