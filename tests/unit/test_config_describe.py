"""`hfedmoe config`: every field from the dataclasses; the table in docs/config.md is generated from the same rows."""

import dataclasses
from pathlib import Path

from hfedmoe.config import RunConfig
from hfedmoe.config.describe import field_docs, readme_table, render_markdown, render_text

CONFIG_DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def _leaf_names() -> list[str]:
    names = []
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(f.default_factory) if f.default_factory is not dataclasses.MISSING else False:
            names += [f"{f.name}.{g.name}" for g in dataclasses.fields(f.default_factory)]
        else:
            names.append(f.name)
    return names


def test_every_field_listed_once_with_help():
    docs = field_docs()
    names = [d.name for d in docs]
    assert sorted(names) == sorted(_leaf_names())
    assert len(set(names)) == len(names)
    assert all(d.help for d in docs), [d.name for d in docs if not d.help]
    for field in ("data.num_clients", "data.max_examples", "train.local_steps", "federation.keep_checkpoints"):
        assert field in names


def test_text_lists_type_default_and_wrapped_help_per_field():
    lines = render_text().splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("train.lr "))
    assert lines[at].split() == ["train.lr", "float", repr(RunConfig().train.lr)]
    assert lines[at + 1] == "    learning rate"
    assert max(len(x) for x in lines) <= 100


def test_config_doc_table_matches_the_dataclasses():
    table = readme_table(CONFIG_DOC.read_text())
    assert table is not None, "docs/config.md lost its config-table markers"
    assert table == render_markdown(), (
        "docs/config.md's config table is stale: run `python scripts/docs_results.py --config-table-only`")
