"""Warnings that name the field to change, and natural splits that must stay federated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hfedmoe.errors import HFedMoEError
from hfedmoe.report.advice import data_warnings, drift_warnings, plural


def _data(**kw):
    base = dict(client_rows=[30, 30, 40], client_names=["", "", ""], token_lengths=np.array([5, 6, 7, 8, 32]),
                max_length=32, text_chars=np.array([20, 25, 30, 30, 200]), train_labels=np.array([0] * 50 + [1] * 50),
                label_names=["neg", "pos"])
    base.update(kw)
    return data_warnings(**base)


def test_balanced_short_data_gives_no_warning():
    assert _data() == []


def test_a_client_with_most_rows_is_named_with_its_group_and_the_fix():
    (w,) = _data(client_rows=[10, 73, 17], client_names=["a", "(other)", "c"])
    assert "client 1 (group '(other)') holds 73% of the training rows (73 of 100)" in w
    assert "data.min_group_size" in w and "data.max_clients" in w
    (w,) = _data(client_rows=[10, 80, 10])  # dirichlet: no group
    assert "client 1 holds 80%" in w and "data.alpha" in w
    assert _data(client_rows=[50, 50]) == []  # exactly half is not "most"


def test_truncation_share_names_max_length():
    (w,) = _data(token_lengths=np.array([48, 48, 48, 10]), max_length=48, text_chars=np.array([440, 500, 300, 40]))
    assert w.startswith("75% of the texts reach data.max_length = 48 tokens") and "median text 370 characters" in w
    assert "raise data.max_length" in w
    # a causal LM's sequences are laid out to max_length on purpose (data.layout reports the kept
    # share itself): packed sequences all reach it, and that is no truncation warning
    assert _data(token_lengths=np.array([48, 48, 48, 48]), max_length=48, text_chars=np.array([440, 500, 300, 40]),
                 train_labels=np.zeros(0, dtype=np.int64), task="causal-lm") == []


def test_tiny_classes_are_listed_with_counts():
    (w,) = _data(train_labels=np.array([0] * 50 + [1] * 3 + [2] * 9), label_names=["a", "b", "c"])
    assert w.startswith("2 classes with fewer than 10 training examples: 'b' (3), 'c' (9)")
    assert "train.loss = 'balanced'" in w
    assert _data(train_labels=np.array([0] * 5), label_names=["a", "b"], task="causal-lm") == []


def _rows(accs, share=None):
    rows = [{"round": r, "test_accuracy": a} for r, a in enumerate(accs)]
    rows[-1]["test_pred_share"] = share or []
    return rows


def test_final_well_below_best_round_names_best_val_and_lr():
    (w,) = drift_warnings(_rows([0.5, 0.7, 0.756, 0.698]))
    assert w.startswith("final test accuracy 69.8% is 5.8 points below round 2 (75.6%)")
    assert "federation.select_model = 'best-val'" in w and "train.lr" in w
    assert drift_warnings(_rows([0.5, 0.7, 0.72, 0.70])) == []
    # the run already keeps a round chosen on validation: say which, do not suggest best-val again
    (w,) = drift_warnings(_rows([0.5, 0.7, 0.756, 0.698]), kept_round=1)
    assert "keeps round 1, chosen on the clients' validation splits" in w and "select_model" not in w


def test_one_class_drift_compares_with_the_true_share():
    (w,) = drift_warnings(_rows([0.5, 0.7], share=[0.83, 0.17]), test_share=[0.55, 0.45], label_names=["neg", "pos"])
    assert "predicts class 'neg' for 83% of the test set (its true share is 55%)" in w
    assert "train.loss = 'logit-adjusted'" in w
    assert drift_warnings(_rows([0.5, 0.7], share=[0.83, 0.17]), test_share=[0.8, 0.2]) == []  # follows the data
    assert drift_warnings(_rows([0.5, 0.7], share=[0.97, 0.03]), test_share=[0.5, 0.5]) == []  # collapse: elsewhere


def test_plural():
    assert plural(1, "client") == "1 client" and plural(3, "client") == "3 clients"


def test_natural_split_into_one_client_is_an_error_naming_the_fields(tmp_path):
    from hfedmoe.assets.models import load_minilm_tokenizer
    from hfedmoe.config import load_config
    from hfedmoe.federation.data import build_federation

    rng = np.random.default_rng(0)
    rows = [{"text": f"review {g} {i}", "label": int(rng.random() < 0.4), "author": f"a{g}"}
            for g in range(40) for i in range(5)]
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    sets = ['data.dataset="local"', f'data.path="{path}"', 'data.group_column="author"', 'data.partition="natural"',
            "data.min_group_size=20"]
    with pytest.raises(HFedMoEError) as exc:
        build_federation(load_config(None, sets), load_minilm_tokenizer())
    msg = str(exc.value)
    assert msg.startswith("data.min_group_size: the natural split by author left 1 client (40 groups")
    assert "data.max_clients" in msg and "\n" not in msg
    fed = build_federation(load_config(None, sets[:-1] + ["data.min_group_size=1", "data.max_clients=2"]),
                           load_minilm_tokenizer())
    assert len(fed.clients) == 2 and any("holds" in w and "'(other)'" in w for w in fed.warnings)
