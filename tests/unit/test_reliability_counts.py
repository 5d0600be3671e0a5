"""The reliability figures of docs/reliability.md are counted from the tests that exercise them, so they cannot
drift: adding an attack, a bad input, a corruption or a kill point changes the expected line."""

import inspect
import re
from pathlib import Path

from tests.flower import test_engine as flower
from tests.integration import test_bad_inputs as bad
from tests.integration import test_checkpoint_trust as trust
from tests.integration import test_hostile_updates as hostile
from tests.integration import test_interrupt_and_locks as interrupt

RELIABILITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


def _tests(module, pattern: str) -> list[str]:
    return [n for n, f in inspect.getmembers(module, inspect.isfunction)
            if n.startswith("test_") and re.search(pattern, n)]


def counts_line() -> str:
    single = _tests(hostile, r"^test_a_")  # one attack per test; the parametrized test runs KINDS
    over_flower = _tests(flower, r"malformed|invalid_update|replayed")
    tried = len(hostile.KINDS) + len(single) + len(over_flower)
    accepted = len([n for n in single if "inside_the_bound" in n])
    ctrl_c = len(_tests(interrupt, r"ctrl_c"))
    return (f"**Counted from the tests** (`tests/unit/test_reliability_counts.py` keeps these figures equal to "
            f"them): {tried} hostile updates tried ({len(over_flower)} over Flower messages), {tried - accepted} "
            f"rejected (the round aggregated from the other clients), {accepted} accepted inside the "
            f"optimizer's bound (deviation at most `2 tau`, tested); {len(bad.CASES)} bad inputs (exit 2, one line, "
            f"nothing written); {len(trust.CORRUPTIONS)} checkpoint corruptions and {len(trust.CONFIG_EDITS) + 1} "
            f"config edits refused without changing the folder; {len(trust.KILL_POINTS)} forced kill points and "
            f"{len(trust.KILL_DELAYS)} SIGKILLs of a real run resumed bit-identically; {ctrl_c} Ctrl-C tests.")


def test_reliability_doc_counts_are_the_tests_counts():
    text = " ".join(RELIABILITY_DOC.read_text().split())
    expected = counts_line()
    assert expected in text, f"docs/reliability.md should say:\n{expected}"
