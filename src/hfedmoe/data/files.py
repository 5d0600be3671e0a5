"""Users' table files as they have them: CSV, TSV, JSON Lines, JSON arrays and Parquet.

The format is detected from the content (Parquet magic bytes, a leading ``[`` or ``{``, the
delimiter of the header line); the extension is only a hint, so a ``.json`` array written by
pandas ``orient="records"`` or a ``.csv`` that is really tab-separated both load. Every error is
one readable line: lists (of columns, of rows) are cut to a few items.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hfedmoe.errors import HFedMoEError

log = logging.getLogger(__name__)

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
_SNIFF_BYTES = 65536


def short_list(items: Sequence[object], limit: int = 8, width: int = 40) -> str:
    """``a, b, c, ... (+97 more)``: at most ``limit`` items, each cut to ``width`` characters."""
    shown = []
    for x in list(items)[:limit]:
        text = str(x)
        shown.append(text if len(text) <= width else text[: width - 3] + "...")
    more = len(items) - len(shown)
    return ", ".join(shown) + (f", ... (+{more} more)" if more > 0 else "")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def detect_format(path: Path, field: str = "data.path") -> str:
    """One of :data:`FORMATS`, from the first bytes of the file (the extension breaks ties only)."""
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if head.startswith(b"PAR1"):
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if not text:
        return "empty"
    if text[:1] == b"[":
        return "json"
    if text[:1] == b"{":
        return "jsonl"
    if b"\x00" in head or head[:2] == b"PK":
        raise HFedMoEError(
            f"{field}: cannot read {path.name}: binary content that is not Parquet (starts with {head[:4]!r}); "
            "expected CSV, TSV, JSON Lines, a JSON array or Parquet"
        )
    first_line = text.decode("utf-8", errors="replace").splitlines()[0]
    if first_line.count("\t") > first_line.count(","):
        return "tsv"
    if path.suffix.lower() == ".tsv" and "\t" in first_line:
        return "tsv"
    return "csv"


def read_table(path: Path, field: str = "data.path") -> pd.DataFrame:
    """The file as a DataFrame (no rows: an empty frame); missing values stay NA only for empty
    CSV fields and JSON nulls (a text "NA" or "null" stays a text)."""
    fmt = detect_format(path, field)
    suffix = path.suffix.lower().lstrip(".")
    if fmt == "empty":
        return pd.DataFrame()
    expected_by_suffix = {"csv": "csv", "tsv": "tsv", "jsonl": "jsonl", "json": "json", "parquet": "parquet",
                          "pq": "parquet", "ndjson": "jsonl"}.get(suffix)
    if expected_by_suffix is not None and expected_by_suffix != fmt and not (
            {expected_by_suffix, fmt} <= {"json", "jsonl"}):
        log.info("%s: extension .%s but the content is %s; reading it as %s", path.name, suffix, fmt, fmt)
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        if fmt in ("csv", "tsv"):
            _check_header(path, "\t" if fmt == "tsv" else ",", field)
            return pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", keep_default_na=False, na_values=[""],
                               encoding="utf-8", quoting=csv.QUOTE_MINIMAL)
        if fmt == "json":
            return _read_json_array(path)
        try:
            return pd.read_json(path, lines=True, dtype=False)
        except ValueError:
            # one JSON object spread over lines, e.g. {"text": [...], "label": [...]}
            return pd.DataFrame(pd.read_json(path, dtype=False))
    except HFedMoEError:
        raise
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except UnicodeDecodeError as exc:
        raise HFedMoEError(f"{field}: cannot read {path.name} as {fmt}: not UTF-8 (byte offset {exc.start})") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise HFedMoEError(f"{field}: cannot parse {path.name} as {fmt}: {_short(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow and the json module raise their own types
        raise HFedMoEError(f"{field}: cannot parse {path.name} as {fmt}: {type(exc).__name__}: {_short(exc)}") from None


def read_user_file(path: str | Path) -> tuple[Path, pd.DataFrame]:
    """``(path, rows)`` of a user's data file (``data.path``): one-line errors for a missing file
    and for a file without rows."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise HFedMoEError(f"data.path: file not found: {path}")
    frame = read_table(path)
    if frame.empty:
        raise HFedMoEError(f"data.path: {path} is empty (no rows)")
    return path, frame


def _check_header(path: Path, sep: str, field: str) -> None:
    """pandas renames a repeated CSV header ("text", "text.1"): refuse it instead."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh, delimiter=sep), [])
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise HFedMoEError(f"{field}: expected distinct column names, got {short_list(dup)} more than once in the "
                           f"header of {path.name}")


def _read_json_array(path: Path) -> pd.DataFrame:
    """A JSON array of records (``orient="records"``), read with the json module (pandas would
    guess dtypes and turn "NaN"/"null" strings into missing values)."""
    import json

    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        kinds = sorted({type(r).__name__ for r in data}) if isinstance(data, list) else [type(data).__name__]
        raise HFedMoEError(
            f"data.path: expected a JSON array of objects (one per row), got an array of {short_list(kinds)} "
            f"in {path.name}"
        )
    return pd.DataFrame.from_records(data)

