"""The README's demo numbers and demo time are rendered from docs/results/demo/summary.json and
timings.json by scripts/docs_results.py (`make docs-results`), so they cannot drift from what the
code produced."""

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("docs_results", ROOT / "scripts" / "docs_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_demo_block_matches_summary():
    mod = _script()
    summary = json.loads((ROOT / "docs" / "results" / "demo" / "summary.json").read_text())
    block = mod.readme_block((ROOT / "README.md").read_text())
    assert block is not None, "README.md lost its demo-results markers"
    assert block == mod.render_demo(summary), "README demo numbers are stale: run `make docs-results`"


def test_readme_demo_time_block_matches_timings():
    mod = _script()
    timings = json.loads((ROOT / "docs" / "results" / "demo" / "timings.json").read_text())
    block = mod.block((ROOT / "README.md").read_text(), mod.TIME_START, mod.TIME_END)
    assert block is not None, "README.md lost its demo-time markers"
    assert block == mod.render_time(timings), "README demo time is stale: run `make docs-results`"


def test_no_other_demo_duration_is_stated():
    """The measured figure is the only demo duration: no '8 minutes' / 'under 15 minutes' elsewhere."""
    mod = _script()
    texts = {p: p.read_text() for p in [ROOT / "README.md", ROOT / "Makefile", ROOT / "configs" / "default.toml",
                                         ROOT / "scripts" / "docs_results.py"]}
    readme = texts[ROOT / "README.md"]
    texts[ROOT / "README.md"] = readme.replace(mod.block(readme, mod.TIME_START, mod.TIME_END), "")
    duration = re.compile(r"\d+[\s-]*(min|minute|minutes)\b")
    for path, text in texts.items():
        for line in text.splitlines():
            about_demo = path.name == "default.toml" or (
                re.search(r"\bdemo\b", line, re.I) and "demo-llm" not in line and "demo-method" not in line)
            assert not (about_demo and duration.search(line)), f"{path.name}: {line.strip()}"


def test_render_uses_every_number_from_summary():
    mod = _script()
    text = mod.render_demo({"model": "M", "num_examples": 6000, "dataset": "vader",
                            "num_clients": 8, "budgets": [1, 1, 3, 8], "initial_test_accuracy": 0.495,
                            "final_test_accuracy": 0.787, "rounds": 8, "final_test_macro_f1": 0.78,
                            "majority_rate": 0.526})
    for part in ("6,000 vader", "8 clients", "1/1/3/8", "49.5%", "78.7%", "8 rounds", "78.0%", "52.6%"):
        assert part in text


def test_render_time_states_both_machines_and_what_is_missing():
    mod = _script()
    both = mod.render_time({"idle": {"wall_time_s": 473.4, "date": "2026-12-06", "load_before": 0.12, "note": ""},
                            "loaded": {"wall_time_s": 1959.2, "date": "2026-12-01", "load_before": None,
                                       "note": "next to four other jobs"}})
    assert "**7 min 53 s** on an idle machine (2026-12-06, one-minute load average 0.1 at the start)" in both
    assert "**32 min 39 s** on a loaded machine (2026-12-01; next to four other jobs)" in both
    assert "on an idle machine: not measured yet" in mod.render_time({"loaded": {"wall_time_s": 61.0}})


def test_record_timing_replaces_only_its_machine():
    mod = _script()
    old = {"loaded": {"wall_time_s": 1959.2}}
    new = mod.record_timing(old, {"wall_time_s": 473.44}, "idle", 0.12, "")
    assert new["loaded"] == old["loaded"] and new["idle"]["wall_time_s"] == 473.4 and new["idle"]["load_before"] == 0.12
    assert old == {"loaded": {"wall_time_s": 1959.2}}
