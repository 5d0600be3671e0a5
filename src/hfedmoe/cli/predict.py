"""``hfedmoe predict``: a classification run's newest global model on new texts.

Texts come from ``--text`` or a file (``.txt``: one text per line; CSV / TSV / JSON Lines / JSON
array / Parquet: the column ``--text-column``, default the run's ``data.text_column``). Each text
is tokenised like the run's data (``data.max_length``) and gets its predicted label and one
probability per class; the result is CSV or JSON Lines (by the ``--out`` suffix; stdout: CSV).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hfedmoe.errors import HFedMoEError

OUT_FORMATS = (".csv", ".jsonl")


def read_texts(input_path: Path | None, text: str | None, column: str) -> list[str]:
    """The texts to classify; a one-line HFedMoEError for a missing, empty or malformed input."""
    from hfedmoe.data.files import read_table, short_list

    if (input_path is None) == (text is None):
        raise HFedMoEError("--input/--text: expected exactly one of them, got "
                           + ("both" if text is not None else "neither"))
    if text is not None:
        if not text.strip():
            raise HFedMoEError("--text: expected a non-empty text, got ''")
        return [text]
    path = Path(input_path)
    if not path.is_file():
        raise HFedMoEError(f"--input: expected a readable file, got {str(path)!r} (no such file)")
    if path.suffix.lower() == ".txt":
        texts = [line.rstrip("\n") for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
        texts = [t for t in texts if t.strip()]
    else:
        frame = read_table(path, "--input")
        if column not in frame.columns:
            raise HFedMoEError(f"--text-column: expected a column of {path.name} ({short_list(list(frame.columns))}), "
                               f"got {column!r}")
        values = frame[column]
        empty = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
        if empty:
            raise HFedMoEError(f"--input: {path.name} column {column!r} has empty or non-text cells in rows "
                               f"{short_list([i + 2 for i in empty])} (row numbers as in the file, header = 1)")
        texts = [str(v) for v in values]
    if not texts:
        raise HFedMoEError(f"--input: expected at least one text, got none in {path.name}")
    return texts


def class_probs(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int) -> Any:
    """(N, C) numpy softmax probabilities of ``model`` for ``texts``, in the order given."""
    import numpy as np
    import torch

    from hfedmoe.data.batches import iter_batches, tokenize

    data = tokenize(tokenizer, texts, np.zeros(len(texts), dtype=np.int64), max_length)
    device = next(model.parameters()).device
    model.eval()
    out = []
    for batch in iter_batches(data, np.arange(len(texts)), batch_size, shuffle=False):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            out.append(torch.softmax(logits.float(), dim=-1).cpu())  # (B, C)
    return torch.cat(out).numpy()


def write_predictions(texts: list[str], probs: Any, label_names: list[str], out: Path | None) -> str:
    """CSV (``--out *.csv`` or stdout) or JSON Lines (``*.jsonl``) with text, label and
    ``prob_<class>`` per class; written whole to a temporary file first. Returns the CSV text when
    ``out`` is None, else ''."""
    pred = probs.argmax(axis=1)
    rows = [{"text": t, "label": label_names[int(k)], **{f"prob_{n}": round(float(p), 6) for n, p in zip(label_names, pr)}}
            for t, k, pr in zip(texts, pred, probs)]
    if out is not None and out.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if out is None:
        return text
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return ""


def predict_run(run_dir: Path, input_path: Path | None, text: str | None, out: Path | None,
                text_column: str | None) -> tuple[str, int, int]:
    """Classify the texts with the run's newest checkpoint; returns (CSV text or '', round, count)."""
    from hfedmoe.cli.rundir import load_run, run_config
    from hfedmoe.federation.data import load_run_dataset

    if out is not None:
        if out.suffix.lower() not in OUT_FORMATS:
            raise HFedMoEError(f"--out: expected a file ending in {' or '.join(OUT_FORMATS)}, got {str(out)!r}")
        if not out.parent.is_dir():
            raise HFedMoEError(f"--out: expected a file in an existing folder, got {str(out)!r}")
    cfg = run_config(run_dir)
    if cfg.model.task != "classification":
        raise HFedMoEError(f"--run: expected a classification run, got model.task = {cfg.model.task!r} "
                           "(use `hfedmoe generate` for a causal LM)")
    texts = read_texts(input_path, text, text_column or cfg.data.text_column)
    labels = list(load_run_dataset(cfg).label_names)
    run = load_run(run_dir, cfg)
    probs = class_probs(run.model, run.tokenizer, texts, cfg.data.max_length, cfg.train.eval_batch_size)
    return write_predictions(texts, probs, labels, out), run.round, len(texts)


def predict(
    run_dir: Annotated[Path, typer.Option("--run", help="a classification run directory (hfedmoe run --out)")],
    input_path: Annotated[Optional[Path], typer.Option(
        "--input", help="texts to classify: .txt (one per line) or CSV / TSV / JSON Lines / JSON / Parquet")] = None,
    text: Annotated[Optional[str], typer.Option("--text", help="one text to classify")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="output .csv or .jsonl (default: CSV on stdout)")] = None,
    text_column: Annotated[Optional[str], typer.Option(
        "--text-column", help="text column of a table file (default: the run's data.text_column)")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="on an unexpected error, show the plain traceback")] = False,
) -> None:
    """Label new texts with a classification run's newest global model: label and one probability per class."""
    import sys

    from hfedmoe.cli.app import _guard, _setup_logging, err_console

    _setup_logging(False, True)

    def go() -> None:
        csv_text, rnd, n = predict_run(run_dir, input_path, text, out, text_column)
        if out is None:
            sys.stdout.write(csv_text)
        err_console.print(f"[dim]{n} text{'' if n == 1 else 's'} labelled by the global model after round {rnd}"
                          + (f": {out}" if out is not None else "") + "[/]")

    _guard(go, debug)
