"""Bad input at the command line: exit code 2, ONE line on stderr naming the field, no traceback,
nothing written or deleted. Table-driven: each case is (id, argv builder, field named)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import hfedmoe
from hfedmoe.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(hfedmoe.__file__).resolve().parent
TINY = str(ROOT / "configs" / "tiny.toml")

# (id, --set overrides on tiny.toml, field expected in the message)
SETS: list[tuple[str, list[str], str]] = [
    ("lr-inf", ["train.lr=inf"], "train.lr"),
    ("lr-nan", ["train.lr=nan"], "train.lr"),
    ("lr-negative", ["train.lr=-1"], "train.lr"),
    ("lr-text", ["train.lr=abc"], "train.lr"),
    ("lr-huge", ["train.lr=1e9"], "train.lr"),
    ("beta-inf", ["method.beta=inf"], "method.beta"),
    ("beta-negative", ["method.beta=-0.1"], "method.beta"),
    ("lam-above-1", ["method.lam=1.5"], "method.lam"),
    ("tau-nan", ["method.tau=nan"], "method.tau"),
    ("memory-scale-inf", ["clients.memory_scale=inf"], "clients.memory_scale"),
    ("memory-scale-negative", ["clients.memory_scale=-1"], "clients.memory_scale"),
    ("clients-per-round-inf", ["federation.clients_per_round=inf"], "federation.clients_per_round"),
    ("clients-per-round-zero", ["federation.clients_per_round=0"], "federation.clients_per_round"),
    ("clients-per-round-fractional-count", ["federation.clients_per_round=2.5"], "federation.clients_per_round"),
    ("seed-negative", ["seed=-1"], "seed"),
    ("seed-20-digits", ["seed=12345678901234567890"], "seed"),
    ("seed-2^32", ["seed=4294967296"], "seed"),
    ("seed-float", ["seed=1.5"], "seed"),
    ("sgd-momentum-negative", ['train.optimizer="sgd"', "train.momentum=-1"], "train.momentum"),
    ("momentum-nan", ["train.momentum=nan"], "train.momentum"),
    ("momentum-one", ["train.momentum=1.0"], "train.momentum"),
    ("tiny-hidden-35", ["model.tiny_hidden=35"], "model.tiny_hidden"),
    ("tiny-layers-0", ["model.tiny_layers=0"], "model.tiny_layers"),
    ("experts-1000", ["model.num_experts=1000"], "model.num_experts"),
    ("experts-1", ["model.num_experts=1"], "model.num_experts"),
    ("top-k-0", ["model.top_k=0"], "model.top_k"),
    ("top-k-above-experts", ["model.top_k=9"], "model.top_k"),
    ("max-length-4096", ["data.max_length=4096"], "data.max_length"),
    ("max-length-2", ["data.max_length=2"], "data.max_length"),
    ("rounds-1e12", ["federation.rounds=1000000000000"], "federation.rounds"),
    ("rounds-0", ["federation.rounds=0"], "federation.rounds"),
    ("rounds-float", ["federation.rounds=1.5"], "federation.rounds"),
    ("eval-every-0", ["federation.eval_every=0"], "federation.eval_every"),
    ("checkpoint-every-0", ["federation.checkpoint_every=0"], "federation.checkpoint_every"),
    ("keep-checkpoints-negative", ["federation.keep_checkpoints=-1"], "federation.keep_checkpoints"),
    ("partition-unknown", ["data.partition=zipf"], "data.partition"),
    ("partition-with-alpha", ["data.partition=dirichlet0.5"], "data.partition"),
    ("dataset-unknown", ["data.dataset=imagenet"], "data.dataset"),
    ("alpha-zero", ["data.alpha=0"], "data.alpha"),
    ("alpha-inf", ["data.alpha=inf"], "data.alpha"),
    ("test-fraction-one", ["data.test_fraction=1.0"], "data.test_fraction"),
    ("val-fraction-negative", ["data.val_fraction=-0.1"], "data.val_fraction"),
    ("num-clients-0", ["data.num_clients=0"], "data.num_clients"),
    ("num-clients-float", ["data.num_clients=1e3"], "data.num_clients"),
    ("max-examples-negative", ["data.max_examples=-5"], "data.max_examples"),
    ("batch-size-0", ["train.batch_size=0"], "train.batch_size"),
    ("local-epochs-0", ["train.local_epochs=0"], "train.local_epochs"),
    ("local-steps-negative", ["train.local_steps=-1"], "train.local_steps"),
    ("weight-decay-negative", ["train.weight_decay=-1"], "train.weight_decay"),
    ("trainable-unknown", ['train.trainable=["wings"]'], "train.trainable"),
    ("trainable-empty", ["train.trainable=[]"], "train.trainable"),
    ("profile-unknown", ['clients.profiles=["toaster"]'], "clients.profiles"),
    ("fixed-budget-0", ["clients.fixed_budgets=[0]"], "clients.fixed_budgets"),
    ("method-unknown", ["method.name=magic"], "method.name"),
    ("budget-scope-unknown", ["method.budget_scope=global"], "method.budget_scope"),
    ("model-unknown", ["model.name=gpt5"], "model.name"),
    ("hf-without-path", ['model.name="hf"'], "model.path"),
    ("field-unknown", ["data.pathh=x"], "data.pathh"),
    ("top-level-unknown", ["bogus=1"], "bogus"),
    ("set-without-equals", ["rounds"], "--set"),
    ("set-three-parts", ["a.b.c=1"], "--set"),
    ("min-group-size-0", ["data.min_group_size=0"], "data.min_group_size"),
    ("max-clients-negative", ["data.max_clients=-1"], "data.max_clients"),
    ("drop-invalid-int", ["data.drop_invalid=3"], "data.drop_invalid"),
    ("local-without-path", ['data.dataset="local"'], "data.path"),
    ("natural-without-groups", ["data.dataset=sms_spam", "data.partition=natural"], "data.partition"),
]


def _write_files(tmp: Path) -> dict[str, Path]:
    files = {}
    one = tmp / "one_class.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "x", "x"]}).to_csv(one, index=False)
    files["one_class"] = one
    null = tmp / "null_label.csv"
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", None, "y"]}).to_csv(null, index=False)
    files["null_label"] = null
    blank = tmp / "blank_text.csv"
    pd.DataFrame({"text": ["a", "   ", "c"], "label": ["x", "y", "y"]}).to_csv(blank, index=False)
    files["blank_text"] = blank
    numbers = tmp / "numbers.json"
    numbers.write_text("[1, 2, 3]")
    files["numbers"] = numbers
    bad_utf8 = tmp / "latin1.toml"
    bad_utf8.write_bytes(b"seed = 0\n# caf\xe9\n")
    files["latin1"] = bad_utf8
    bad_toml = tmp / "broken.toml"
    bad_toml.write_text("seed = = 0\n")
    files["broken"] = bad_toml
    an_existing_file = tmp / "a_file"
    an_existing_file.write_text("keep me")
    files["a_file"] = an_existing_file
    run_dir = tmp / "old_run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text("[train]\nlr = inf\nbatch_size = 0\n")
    files["old_run"] = run_dir
    bench_escape = tmp / "bench_escape.toml"
    bench_escape.write_text(f'base = "{TINY}"\n[[datasets]]\nname = "../../../x"\n')
    files["bench_escape"] = bench_escape
    dict_labels = tmp / "dict_labels.jsonl"
    dict_labels.write_text("\n".join(f'{{"text": "t{i}", "label": {{"a": {i % 2}}}}}' for i in range(8)))
    files["dict_labels"] = dict_labels
    list_labels = tmp / "list_labels.jsonl"
    list_labels.write_text("\n".join(f'{{"text": "t{i}", "label": [{i % 2}]}}' for i in range(8)))
    files["list_labels"] = list_labels
    bytes_texts = tmp / "bytes_texts.parquet"
    pd.DataFrame({"text": [b"abc", b"def"] * 4, "label": [0, 1] * 4}).to_parquet(bytes_texts)
    files["bytes_texts"] = bytes_texts
    dup = tmp / "dup_columns.csv"
    dup.write_text("text,label,text\n" + "\n".join(f"a{i},{i % 2},b{i}" for i in range(8)) + "\n")
    files["dup_columns"] = dup
    plain = tmp / "plain.csv"
    plain.write_text("text,label\n" + "\n".join(f"a{i},{i % 2}" for i in range(8)) + "\n")
    files["plain"] = plain
    for name, text in (("deep_array", "seed = " + "[" * 5000 + "]" * 5000),
                       ("deep_inline", "seed = " + "{a = " * 5000 + "1" + "}" * 5000),
                       ("deep_tables", "[model." + ".".join(["a"] * 5000) + "]")):
        (tmp / f"{name}.toml").write_text(text + "\n")
        files[name] = tmp / f"{name}.toml"
    binary = tmp / "binary_metrics"
    binary.mkdir()
    (binary / "config.toml").write_text(Path(TINY).read_text())
    (binary / "metrics.jsonl").write_bytes(bytes(range(256)) * 8)
    files["binary_metrics"] = binary
    bench_ok = tmp / "bench_ok.toml"
    bench_ok.write_text(f'base = "{TINY}"\nmethods = ["hfedmoe"]\nseeds = [0]\n')
    files["bench_ok"] = bench_ok
    return files


def _local(kind: str) -> list[str]:
    return ["data.dataset=local", f"data.path=__{kind}__", "data.partition=iid", "data.num_clients=1"]


# (id, argv with placeholders __NAME__ for files and __OUT__ for a fresh output folder, field)
OTHER: list[tuple[str, list[str], str]] = [
    ("local-single-class", ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in _local("one_class")), [])],
     "data.label_column"),
    ("local-null-label", ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in _local("null_label")), [])],
     "data.label_column"),
    ("local-blank-text", ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in _local("blank_text")), [])],
     "data.text_column"),
    ("local-missing-column", ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in _local("one_class")), []),
                              "--set", "data.text_column=body"], "data.text_column"),
    ("local-json-numbers", ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in _local("numbers")), [])],
     "data.path"),
    ("local-file-missing", ["run", "-c", TINY, "-o", "__OUT__", "--set", "data.dataset=local", "--set",
                            "data.path=/nonexistent/x.csv"], "data.path"),
    ("config-non-utf8", ["run", "-c", "__latin1__", "-o", "__OUT__"], "--config"),
    ("config-invalid-toml", ["run", "-c", "__broken__", "-o", "__OUT__"], "--config"),
    ("config-missing", ["run", "-c", "/nonexistent/c.toml", "-o", "__OUT__"], "--config"),
    ("out-is-a-file", ["run", "-c", TINY, "-o", "__a_file__"], "--out"),
    ("out-empty", ["run", "-c", TINY, "-o", ""], "--out"),
    ("out-under-a-file", ["run", "-c", TINY, "-o", "__a_file__/sub"], "--out"),
    ("resume-invalid-config", ["resume", "__old_run__"], "config.toml"),
    ("resume-no-run", ["resume", "__OUT__"], "DIR"),
    ("bench-seeds-negative", ["bench", "-c", "__bench_ok__", "-o", "__OUT__", "--seeds", "-1"], "--seeds"),
    ("bench-seeds-empty", ["bench", "-c", "__bench_ok__", "-o", "__OUT__", "--seeds", ""], "--seeds"),
    ("bench-seeds-text", ["bench", "-c", "__bench_ok__", "-o", "__OUT__", "--seeds", "a,b"], "--seeds"),
    ("bench-name-escapes-out", ["bench", "-c", "__bench_escape__", "-o", "__OUT__"], "datasets[0].name"),
    ("bench-config-missing", ["bench", "-c", "/nonexistent/b.toml", "-o", "__OUT__"], "--config"),
    ("config-show-bad-set", ["config", "--show", TINY, "--set", "train.lr=inf"], "train.lr"),
    ("local-dict-labels", ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in _local("dict_labels")), [])],
     "data.label_column"),
    ("local-list-labels", ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in _local("list_labels")), [])],
     "data.label_column"),
    ("local-bytes-texts", ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in _local("bytes_texts")), [])],
     "data.text_column"),
    ("local-duplicated-columns", ["run", "-c", TINY, "-o", "__OUT__",
                                  *sum((["--set", s] for s in _local("dup_columns")), [])], "data.path"),
    ("local-label-is-text", ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in _local("plain")), []),
                             "--set", "data.label_column=text"], "data.label_column"),
    ("config-5000-deep-array", ["run", "-c", "__deep_array__", "-o", "__OUT__"], "--config"),
    ("config-5000-deep-inline-table", ["run", "-c", "__deep_inline__", "-o", "__OUT__"], "--config"),
    ("config-5000-deep-tables", ["run", "-c", "__deep_tables__", "-o", "__OUT__"], "--config"),
    ("set-5000-deep", ["run", "-c", TINY, "-o", "__OUT__", "--set", "seed=" + "[" * 5000 + "]" * 5000], "--set"),
    ("resume-binary-metrics", ["resume", "__binary_metrics__"], "metrics.jsonl"),
    ("bench-seeds-repeated", ["bench", "-c", "__bench_ok__", "-o", "__OUT__", "--seeds", "1,1"], "--seeds"),
    ("bench-out-inside-package", ["bench", "-c", "__bench_ok__", "-o", str(PACKAGE / "bench_out")], "--out"),
    ("out-inside-package", ["run", "-c", TINY, "-o", str(PACKAGE / "runs" / "x")], "--out"),
]

CASES = [(cid, ["run", "-c", TINY, "-o", "__OUT__", *sum((["--set", s] for s in sets), [])], field)
         for cid, sets, field in SETS] + OTHER


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


def test_at_least_60_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, argv, field):
    files = _write_files(tmp_path)
    out = tmp_path / "out"
    args = []
    for a in argv:
        a = a.replace("__OUT__", str(out))
        for name, path in files.items():
            a = a.replace(f"__{name}__", str(path))
        args.append(a)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(app, args)
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.stdout, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert field in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert _snapshot(tmp_path) == before  # nothing written, nothing deleted
    assert not (PACKAGE / "runs").exists() and not (PACKAGE / "bench_out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_out_under_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        result = CliRunner().invoke(app, ["run", "-c", TINY, "-o", str(ro / "run")])
        assert result.exit_code == 2 and "--out" in result.stderr and not (ro / "run").exists()
    finally:
        ro.chmod(0o700)


def test_unexpected_error_is_one_line_and_debug_shows_it(tmp_path, monkeypatch):
    import hfedmoe.engines.simulation as simulation

    def boom(*a, **k):
        secret = "LOCAL-VARIABLE-CONTENT"  # noqa: F841 - must never be printed
        raise RuntimeError("boom")

    monkeypatch.setattr(simulation, "Simulation", boom)
    result = CliRunner().invoke(app, ["run", "-c", TINY, "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "internal error: RuntimeError: boom" in result.stderr and "LOCAL-VARIABLE" not in result.stderr
    result = CliRunner().invoke(app, ["run", "-c", TINY, "-o", str(tmp_path / "o"), "--debug"])
    assert isinstance(result.exception, RuntimeError)
