"""The README's demo numbers are rendered from docs/results/demo/summary.json by
scripts/docs_results.py (`make docs-results`), so they cannot drift from what the code produced."""

import importlib.util
import json
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


def test_render_uses_every_number_from_summary():
    mod = _script()
    text = mod.render_demo({"wall_time_human": "7 min 53 s", "model": "M", "num_examples": 6000, "dataset": "vader",
                            "num_clients": 8, "budgets": [1, 1, 3, 8], "initial_test_accuracy": 0.495,
                            "final_test_accuracy": 0.787, "rounds": 8, "final_test_macro_f1": 0.78,
                            "majority_rate": 0.526})
    for part in ("7 min 53 s", "6,000 vader", "8 clients", "1/1/3/8", "49.5%", "78.7%", "8 rounds", "78.0%", "52.6%"):
        assert part in text
