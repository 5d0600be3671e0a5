"""What a bench scores, chosen once from the task (``model.task``): test accuracy for
classification (higher is better), test perplexity for a causal LM (lower is better).

Everything in the bench that compares numbers (best trial of a sweep, rounds to a target, paired
differences and their verdicts, table and plot labels) asks the :class:`BenchMetric` of its
dataset instead of assuming "higher is better".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hfedmoe.errors import HFedMoEError


@dataclass(frozen=True)
class BenchMetric:
    """One scored quantity of a bench.

    Attributes
    ----------
    key : str
        Metrics-row key of the final test score (``test_accuracy`` / ``test_perplexity``).
    sweep_key : str
        Metrics-row key the sweep optimises: a mean over the clients' VALIDATION splits, never test.
    higher_is_better : bool
        Direction of ``key`` and ``sweep_key``.
    label : str
        Human name of ``key`` ("test accuracy").
    percent : bool
        Shown in percent (values in [0, 1]); differences then in percentage points.
    target_field : str
        Bench-file key holding the target for "rounds to target" (``target_accuracy`` / ``target_perplexity``).
    """

    key: str
    sweep_key: str
    higher_is_better: bool
    label: str
    percent: bool
    target_field: str

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def unit(self) -> str:
        """Unit of a value, for table headers: "%" or ""."""
        return "%" if self.percent else ""

    @property
    def diff_unit(self) -> str:
        """Unit of a difference of two values: "points" or the metric's own."""
        return "points" if self.percent else self.label.split()[-1]

    def better(self, a: float, b: float) -> bool:
        """``a`` strictly better than ``b`` (NaN is never better)."""
        return a > b if self.higher_is_better else a < b

    def best(self, values: list[float]) -> float:
        """The best of ``values`` (NaN when empty)."""
        return (max if self.higher_is_better else min)(values, default=math.nan)

    def reached(self, value: float, target: float) -> bool:
        """``value`` meets ``target``: ``>=`` for higher-is-better, ``<=`` for lower-is-better."""
        return value >= target if self.higher_is_better else value <= target

    def verdict(self, lo: float, hi: float, n: int) -> str:
        """Verdict on a paired difference ``method - ref`` with CI ``[lo, hi]`` over ``n`` seeds:
        "better" / "worse" (in the metric's own direction) or a tie when the CI contains 0."""
        if n < 2 or math.isnan(lo) or math.isnan(hi):
            return "-"
        if lo > 0 or hi < 0:
            up = lo > 0
            return "better" if up == self.higher_is_better else "worse"
        return "tie (CI contains 0)"

    def fmt(self, x: float | None) -> str:
        """A value as a table cell: percent (one decimal) or two decimals; "-" for None / NaN."""
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "-"
        return f"{100 * x:.1f}" if self.percent else f"{x:.2f}"

    def fmt_diff(self, x: float | None) -> str:
        """A signed difference as a table cell ("-" for None / NaN)."""
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "-"
        return f"{100 * x:+.1f}" if self.percent else f"{x:+.2f}"


METRICS: dict[str, BenchMetric] = {
    "classification": BenchMetric("test_accuracy", "client_val_accuracy_mean", True, "test accuracy", True,
                                  "target_accuracy"),
    "causal-lm": BenchMetric("test_perplexity", "client_val_perplexity_mean", False, "test perplexity", False,
                             "target_perplexity"),
}


def metric_for(task: str) -> BenchMetric:
    """The metric of ``task`` (``model.task``)."""
    try:
        return METRICS[task]
    except KeyError:
        raise HFedMoEError(f"model.task: expected one of {', '.join(METRICS)}, got {task!r}") from None


def check_target(metric: BenchMetric, value: Any, where: str) -> float:
    """A validated target for ``metric``: accuracy in (0, 1], perplexity >= 1."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if metric.percent:
        ok = ok and 0 < value <= 1
        expected = "a number in (0, 1]"
    else:
        ok = ok and value >= 1
        expected = "a number >= 1 (a perplexity)"
    if not ok:
        raise HFedMoEError(f"{where}: expected {expected}, got {value!r}")
    return float(value)
