"""Users' files as they have them: format by content, row-numbered errors, drop_invalid, short errors."""

import json

import numpy as np
import pandas as pd
import pytest

from hfedmoe.assets.datasets import load_local
from hfedmoe.data.files import detect_format
from hfedmoe.errors import HFedMoEError

FRAME = pd.DataFrame({"text": ["good film", "awful", "fine, really", "meh", "NA"], "label": ["pos", "neg", "pos", "neg", "pos"]})


def _check(data):
    assert data.texts == FRAME["text"].tolist()
    assert data.label_names == ["neg", "pos"] and data.labels.tolist() == [1, 0, 1, 0, 1]


@pytest.mark.parametrize(("writer", "name", "fmt"), [
    (lambda f, p: f.to_json(p, orient="records"), "array.json", "json"),  # pandas records = JSON array
    (lambda f, p: f.to_json(p, orient="records"), "array.jsonl", "json"),  # extension lies
    (lambda f, p: f.to_json(p, orient="records", lines=True), "lines.json", "jsonl"),
    (lambda f, p: f.to_csv(p, sep="\t", index=False), "tabs.csv", "tsv"),  # extension lies
    (lambda f, p: f.to_csv(p, sep="\t", index=False), "tabs.tsv", "tsv"),
    (lambda f, p: f.to_csv(p, index=False), "plain.txt", "csv"),
    (lambda f, p: f.to_parquet(p, index=False), "columns.csv", "parquet"),  # extension lies
])
def test_format_detected_by_content(tmp_path, writer, name, fmt):
    path = tmp_path / name
    writer(FRAME, path)
    assert detect_format(path) == fmt
    _check(load_local(path))


def test_whitespace_text_rejected_with_row_numbers(tmp_path):
    frame = FRAME.copy()
    frame.loc[[1, 3], "text"] = ["   ", "\t"]
    path = tmp_path / "w.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(HFedMoEError, match=r"data.text_column: .* 2 null or empty/whitespace-only texts \(rows 2, 4\)"):
        load_local(path)


def test_null_label_names_its_row(tmp_path):
    path = tmp_path / "n.jsonl"
    rows = [{"text": t, "label": lab} for t, lab in zip(FRAME["text"], FRAME["label"])]
    rows[2]["label"] = None
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(HFedMoEError, match=r"data.label_column: .* 1 null cells \(row 3\)"):
        load_local(path)


def test_drop_invalid_drops_and_counts(tmp_path, caplog):
    frame = FRAME.copy()
    frame.loc[1, "text"] = " "
    frame.loc[2, "label"] = None
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    with caplog.at_level("WARNING"):
        data = load_local(path, drop_invalid=True)
    assert data.texts == ["good film", "meh", "NA"] and data.labels.tolist() == [1, 0, 1]
    assert "dropped 2 of 5 rows" in caplog.text


def test_many_columns_error_is_one_short_line(tmp_path):
    path = tmp_path / "wide.jsonl"
    path.write_text(json.dumps({f"col{i}": i for i in range(12808)}) + "\n")
    with pytest.raises(HFedMoEError) as exc:
        load_local(path)
    msg = str(exc.value)
    assert "(+12800 more)" in msg and len(msg) < 400 and "\n" not in msg


def test_sparse_integer_labels_mapped_densely(tmp_path):
    path = tmp_path / "ids.csv"
    pd.DataFrame({"text": list("abcd"), "label": [1, 1_000_000_000, 1, 1_000_000_000]}).to_csv(path, index=False)
    data = load_local(path)
    assert data.label_names == ["1", "1000000000"] and data.labels.tolist() == [0, 1, 0, 1]


def test_single_class_and_too_many_classes(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"text": list("abc"), "label": ["x"] * 3}).to_csv(path, index=False)
    with pytest.raises(HFedMoEError, match=r"data.label_column: expected at least 2 classes, got 1 \('x'\)"):
        load_local(path)
    path = tmp_path / "many.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(1500)], "label": [f"l{i}" for i in range(1500)]}).to_csv(path, index=False)
    with pytest.raises(HFedMoEError, match=r"data.label_column: expected at most 1000 classes, got 1500"):
        load_local(path)


def test_json_array_of_non_objects(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("[1, 2, 3]")
    with pytest.raises(HFedMoEError, match="data.path: expected a JSON array of objects"):
        load_local(path)


def test_five_hundred_group_natural_split(tmp_path):
    """500 groups of 3..40 examples: min_group_size merges the small ones, max_clients caps, and the
    resulting clients cover the kept training data exactly once."""
    from hfedmoe.config import load_config
    from hfedmoe.federation.data import build_federation

    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 25, size=500)
    rows = [{"text": f"movie {g} review {i}", "label": int(rng.random() < 0.4), "movie": f"m{g:03d}"}
            for g, n in enumerate(sizes) for i in range(n)]
    path = tmp_path / "movies.csv"
    pd.DataFrame(rows).to_csv(path, index=False)

    sets = ['data.dataset="local"', f'data.path="{path}"', 'data.group_column="movie"', 'data.partition="natural"',
            "data.min_group_size=10", "data.max_clients=60", "data.val_fraction=0.1"]
    cfg = load_config(None, sets)
    from hfedmoe.assets.models import load_minilm_tokenizer

    fed = build_federation(cfg, load_minilm_tokenizer())
    assert len(fed.clients) == 60
    names = [c.name for c in fed.clients]
    assert "(other)" in names and len(set(names)) == 60
    covered = np.concatenate([np.concatenate([c.train_idx, c.val_idx]) for c in fed.clients])
    assert len(covered) == len(set(covered.tolist()))
    assert not set(covered.tolist()) & set(fed.test_idx.tolist())
