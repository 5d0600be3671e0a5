"""A user's own corpus for causal-LM runs: plain text, instruction/response pairs, or chat messages.

No label column: the returned :class:`~hfedmoe.data.types.LabeledTexts` has the single dummy
label ``"text"``. Any file :func:`hfedmoe.data.files.read_table` reads (CSV, TSV, JSON Lines,
JSON array, Parquet). A messages cell is a list of ``{"role", "content"}`` objects (in JSON Lines
as it is, in CSV as a JSON text); roles are ``system``, ``user``, ``assistant``, and every
conversation has at least one assistant message (the loss needs a response).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from hfedmoe.assets.datasets import _column, _invalid_rows, _rows
from hfedmoe.data.files import read_user_file
from hfedmoe.data.lm_docs import ROLES
from hfedmoe.data.types import LabeledTexts
from hfedmoe.errors import HFedMoEError

log = logging.getLogger(__name__)


def _conversation(cell, row: int, column: str, name: str) -> list[dict]:
    where = f"data.messages_column: row {row} of column {column!r} in {name}"
    if isinstance(cell, str):
        try:
            cell = json.loads(cell)
        except ValueError:
            raise HFedMoEError(f"{where}: expected a JSON list of {{role, content}} objects, got text "
                               f"{cell[:40]!r}") from None
    if hasattr(cell, "tolist"):  # Parquet lists arrive as numpy arrays
        cell = cell.tolist()
    if not isinstance(cell, list) or not cell:
        raise HFedMoEError(f"{where}: expected a non-empty list of {{role, content}} objects, got {type(cell).__name__}")
    out = []
    for m in cell:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise HFedMoEError(f"{where}: expected messages {{\"role\": {' | '.join(ROLES)}, \"content\": text}}, "
                               f"got {str(m)[:60]!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise HFedMoEError(f"{where}: expected at least one assistant message (the loss needs a response), got none")
    return out


def load_local_corpus(
    path: str | Path,
    text_column: str = "text",
    group_column: str = "",
    prompt_column: str = "",
    response_column: str = "",
    messages_column: str = "",
    drop_invalid: bool = False,
) -> LabeledTexts:
    """Rows of ``path`` as causal-LM examples (file order): ``texts`` from ``text_column``, or
    ``conversations`` from ``messages_column``, or from ``prompt_column``/``response_column`` (a
    user and an assistant message); ``groups`` from ``group_column`` when set."""
    path, frame = read_user_file(path)
    if messages_column:
        columns = {"data.messages_column": messages_column}
    elif prompt_column or response_column:
        columns = {"data.prompt_column": prompt_column, "data.response_column": response_column}
    else:
        columns = {"data.text_column": text_column}
    if group_column:
        columns["data.group_column"] = group_column
    for field, column in columns.items():
        _column(frame, field, column, path)
    text_like = response_column or text_column
    invalid = _invalid_rows(frame, columns, text_like if not messages_column else "")
    bad = np.zeros(len(frame), dtype=bool)
    for mask in invalid.values():
        bad |= mask
    if bad.any():
        if not drop_invalid:
            field, mask = next((f, m) for f, m in invalid.items() if m.any())
            raise HFedMoEError(f"{field}: column {columns[field]!r} of {path.name} has {int(mask.sum())} null or "
                               f"empty cells ({_rows(mask)}) out of {len(frame)} rows; fix them or set "
                               "data.drop_invalid = true")
        log.warning("%s: dropped %d of %d rows with null or empty cells", path.name, int(bad.sum()), len(frame))
        frame = frame[~bad].reset_index(drop=True)
        if frame.empty:
            raise HFedMoEError(f"data.path: every row of {path.name} is invalid (null or empty)")
    conversations = None
    if messages_column:
        conversations = [_conversation(c, i + 1, messages_column, path.name)
                         for i, c in enumerate(frame[messages_column].tolist())]
    elif prompt_column:
        conversations = [[{"role": "user", "content": str(p)}, {"role": "assistant", "content": str(r)}]
                         for p, r in zip(frame[prompt_column].tolist(), frame[response_column].tolist())]
    if conversations is not None:
        texts = ["\n".join(m["content"] for m in conv) for conv in conversations]
    else:
        texts = frame[text_column].astype(str).tolist()
    groups = frame[group_column].astype(str).to_numpy(dtype=str) if group_column else None
    kind = "conversations" if conversations is not None else "texts"
    log.info("loaded %d %s from %s", len(texts), kind, path)
    return LabeledTexts(texts=texts, labels=np.zeros(len(texts), dtype=np.int64), label_names=["text"],
                        groups=groups, name=path.stem, conversations=conversations)
