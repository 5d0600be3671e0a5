"""Atomic checkpoints: ``checkpoints/round_<N>/`` holds the global model (safetensors), the
server state (JSON) and ``checksums.json`` (SHA-256 of both). Each is written into a temporary
folder and renamed into place, so a kill at any moment leaves the last complete checkpoint usable;
:func:`load_checkpoint` verifies the checksums and parses everything before the caller trusts it,
raising :class:`CheckpointError` with the reason otherwise.

Keyed checksums (optional): with a key in ``HFEDMOE_CHECKPOINT_KEY`` (the key text) or in the file
named by ``HFEDMOE_CHECKPOINT_KEY_FILE``, ``checksums.json`` also holds an HMAC-SHA256 of both files,
and a checkpoint without a matching one is refused: plain SHA-256 only detects damage, anyone who
can write the folder can recompute it; the HMAC needs the key."""

from __future__ import annotations

import hashlib
import hmac
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
SUMS_FILE = "checksums.json"
HMAC_KEY = "hmac-sha256"
KEY_ENV, KEY_FILE_ENV = "HFEDMOE_CHECKPOINT_KEY", "HFEDMOE_CHECKPOINT_KEY_FILE"
OPT_FILE = "server_opt.safetensors"  # the server optimizer's state (federation.server_optimizer), when it has one


class CheckpointError(Exception):
    """A checkpoint that cannot be trusted (damaged, truncated, foreign): the message says why."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_key() -> bytes | None:
    """The HMAC key from the environment (see the module docstring), or None."""
    from hfedmoe.errors import HFedMoEError

    text = os.environ.get(KEY_ENV, "")
    if text:
        return text.encode()
    path = os.environ.get(KEY_FILE_ENV, "")
    if not path:
        return None
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise HFedMoEError(f"{KEY_FILE_ENV}: expected a readable key file, got {path!r} ({exc.strerror})") from None
    if not key:
        raise HFedMoEError(f"{KEY_FILE_ENV}: expected a non-empty key file, got {path!r} (empty)")
    return key


def _hmac(key: bytes, path: Path) -> str:
    h = hmac.new(key, digestmod=hashlib.sha256)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(root: Path, round_idx: int, state_dict: dict[str, torch.Tensor], server_state: dict[str, Any],
                    server_opt: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``root/round_<round_idx>`` atomically and return its path (``server_opt``: tensors of
    the server optimizer's state, in their own checksummed file)."""
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
    names = [MODEL_FILE, STATE_FILE]
    if server_opt:
        save_file(server_opt, str(tmp / OPT_FILE))
        names.append(OPT_FILE)
    sums: dict[str, Any] = {name: _sha256(tmp / name) for name in names}
    key = checkpoint_key()
    if key is not None:
        sums[HMAC_KEY] = {name: _hmac(key, tmp / name) for name in names}
    with open(tmp / SUMS_FILE, "w") as fh:
        json.dump(sums, fh, indent=1, sort_keys=True)
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


def verify_checkpoint(root: Path, round_idx: int) -> None:
    """Raise :class:`CheckpointError` unless both files match ``checksums.json``."""
    d = root / f"round_{round_idx}"
    try:
        sums = json.loads((d / SUMS_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{SUMS_FILE} missing (no checksum to verify)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{SUMS_FILE} unreadable: {exc}") from None
    if not isinstance(sums, dict):
        raise CheckpointError(f"{SUMS_FILE}: expected an object, got {type(sums).__name__}")
    for name in (MODEL_FILE, STATE_FILE, *([OPT_FILE] if OPT_FILE in sums else [])):
        try:
            actual = _sha256(d / name)
        except OSError as exc:
            raise CheckpointError(f"{name} unreadable: {exc}") from None
        if sums.get(name) != actual:
            raise CheckpointError(f"{name}: checksum mismatch (damaged or replaced)")
    key = checkpoint_key()
    if key is None:
        return
    signed = sums.get(HMAC_KEY)
    if not isinstance(signed, dict):
        raise CheckpointError(f"{SUMS_FILE}: no {HMAC_KEY} although {KEY_ENV} / {KEY_FILE_ENV} is set "
                              "(not written with the key)")
    for name in (MODEL_FILE, STATE_FILE, *([OPT_FILE] if OPT_FILE in sums else [])):
        if not hmac.compare_digest(str(signed.get(name, "")), _hmac(key, d / name)):
            raise CheckpointError(f"{name}: {HMAC_KEY} mismatch (replaced, or another key)")


def load_checkpoint(root: Path, round_idx: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified tensors and server state of round ``round_idx``; :class:`CheckpointError`
    when the checksums do not match or a file does not parse."""
    d = root / f"round_{round_idx}"
    verify_checkpoint(root, round_idx)
    try:
        tensors = load_file(str(d / MODEL_FILE), device="cpu")  # load_state_dict copies onto the model's device
    except Exception as exc:  # safetensors raises its own error types on a damaged header  # noqa: BLE001
        raise CheckpointError(f"{MODEL_FILE} does not load: {exc}") from None
    try:
        state = json.loads((d / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{STATE_FILE} does not parse: {exc}") from None
    if not isinstance(state, dict) or state.get("round") != round_idx:
        raise CheckpointError(f"{STATE_FILE}: expected a server state of round {round_idx}")
    return tensors, state


def load_server_opt(root: Path, round_idx: int) -> dict[str, torch.Tensor]:
    """The server optimizer's state tensors of a checkpoint ({} when it has none); call after
    :func:`load_checkpoint` (which verified its checksum)."""
    path = root / f"round_{round_idx}" / OPT_FILE
    if not path.is_file():
        return {}
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors' own error types
        raise CheckpointError(f"{OPT_FILE} does not load: {exc}") from None


def set_aside(root: Path, round_idx: int) -> Path:
    """Rename an untrusted ``round_<N>`` to ``round_<N>.invalid`` (kept for inspection, never
    loaded or pruned as a checkpoint) and return the new path."""
    src = root / f"round_{round_idx}"
    dst = root / f"round_{round_idx}.invalid"
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)
    return dst


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (``keep`` = 0 keeps everything).

    Called only after a newer checkpoint is complete, so the newest one is never at risk.
    """
    if keep <= 0:
        return
    for r in complete_rounds(root)[:-keep]:
        shutil.rmtree(root / f"round_{r}", ignore_errors=True)


def check_checkpoint(own: dict[str, torch.Tensor], method_name: str, tensors: dict[str, Any],
                     state: dict[str, Any]) -> None:
    """CheckpointError unless ``tensors`` are exactly the tensors of the model whose state dict is
    ``own`` and ``state`` is the server state of method ``method_name``."""
    if set(tensors) != set(own):
        extra, lack = sorted(set(tensors) - set(own)), sorted(set(own) - set(tensors))
        raise CheckpointError(f"tensors of another model (unknown {extra[:2]}, missing {lack[:2]})")
    for k, t in own.items():
        if tensors[k].shape != t.shape or tensors[k].dtype != t.dtype:
            raise CheckpointError(f"tensor {k}: {tensors[k].dtype} {tuple(tensors[k].shape)}, "
                                  f"expected {t.dtype} {tuple(t.shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(tensors[k]).all()):
            raise CheckpointError(f"tensor {k}: non-finite values")
    if state.get("method") != method_name:
        raise CheckpointError(f"server state of method {state.get('method')!r}, expected {method_name!r}")
    for key in ("method_state", "sim_time_s", "wall_time_s"):
        if key not in state:
            raise CheckpointError(f"server state without {key!r}")
