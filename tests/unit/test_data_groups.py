import numpy as np

from hfedmoe.data.groups import OTHER, consolidate_groups


def _groups(sizes: dict[str, int]) -> np.ndarray:
    return np.array([g for g, n in sizes.items() for _ in range(n)])


def test_small_groups_merge_into_other():
    g = _groups({"a": 10, "b": 3, "c": 2, "d": 8})
    plan = consolidate_groups(g, min_size=5)
    assert sorted(set(plan.groups.tolist())) == sorted(["a", "d", OTHER])
    assert (plan.groups == OTHER).sum() == 5 and plan.keep.all() and plan.num_merged == 2


def test_other_dropped_when_still_too_small():
    g = _groups({"a": 10, "b": 1, "c": 2})
    plan = consolidate_groups(g, min_size=5)
    assert plan.keep.sum() == 10 and plan.num_dropped_examples == 3
    assert set(plan.groups[plan.keep].tolist()) == {"a"}


def test_cap_keeps_largest_and_other():
    g = _groups({f"g{i:02d}": 10 + i for i in range(20)})
    plan = consolidate_groups(g, min_size=1, max_groups=5)
    kept = set(plan.groups.tolist())
    assert kept == {"g19", "g18", "g17", "g16", OTHER}
    assert plan.keep.all() and len(plan.groups) == len(g)


def test_nothing_to_do_is_identity():
    g = _groups({"a": 3, "b": 4})
    plan = consolidate_groups(g, min_size=1, max_groups=0)
    assert (plan.groups == g).all() and plan.num_merged == 0
