"""Paired differences of final metrics across two bench outputs (same config and seeds, so the same
partitions and budgets), e.g. a pilot's HFedMoE at another beta against the first pilot's no-IB:

    python benchmarks/paired_finals.py OUT_A DATASET_A METHOD_A OUT_B DATASET_B METHOD_B [KEY]

prints mean(A - B) over the seeds both have, its 95% t-interval and how many seeds A is lower.
KEY: test_perplexity (default) or test_accuracy. Uses hfedmoe.bench.paired (the bench's own CI).
"""

from __future__ import annotations

import sys
from pathlib import Path

from hfedmoe.bench.paired import final_by_seed, paired_ci


def _seeds(out: Path, dataset: str, method: str) -> list[int]:
    """The seeds with a run folder (``runs/DATASET/METHOD/seedN``)."""
    runs = (out / "runs" / dataset / method).glob("seed*")
    return sorted(int(p.name[4:]) for p in runs if p.name[4:].isdigit())


def main(out_a: str, ds_a: str, m_a: str, out_b: str, ds_b: str, m_b: str, key: str = "test_perplexity") -> None:
    a, b = (final_by_seed(Path(out), ds, m, _seeds(Path(out), ds, m), key)
            for out, ds, m in ((out_a, ds_a, m_a), (out_b, ds_b, m_b)))
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        raise SystemExit(f"seeds: expected at least 2 runs in both, got {len(common)}")
    ci = paired_ci([a[s] for s in common], [b[s] for s in common])
    lower = sum(a[s] < b[s] for s in common)
    print(f"{ds_a}/{m_a} - {ds_b}/{m_b} ({key}): {ci['mean']:+.1f} [{ci['lo']:+.1f}, {ci['hi']:+.1f}], "
          f"{ci['n']} seeds, A lower on {lower}")


if __name__ == "__main__":
    main(*sys.argv[1:])
