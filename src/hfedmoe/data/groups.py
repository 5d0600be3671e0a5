"""Natural splits at any scale: merge or drop small groups, cap the number of groups (pure numpy).

A natural split by a column with hundreds of values (one group per movie, per user) gives
hundreds of clients, many with a handful of examples. :func:`consolidate_groups` keeps the
``max_groups - 1`` largest groups when there are too many, merges every group below
``min_size`` examples (and the overflow) into one group named :data:`OTHER`, and drops that
group when even merged it stays below ``min_size``. The caller logs what happened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Name of the merged group of small (or overflow) groups.
OTHER = "(other)"


@dataclass(frozen=True)
class GroupPlan:
    groups: np.ndarray  # (N,) str: the new group of each example ("" where dropped)
    keep: np.ndarray  # (N,) bool: False for the examples of a dropped group
    num_groups_before: int
    num_merged: int  # groups merged into OTHER
    num_dropped_examples: int

    def describe(self) -> str:
        after = len(np.unique(self.groups[self.keep])) if self.keep.any() else 0
        parts = [f"{self.num_groups_before} group{'' if self.num_groups_before == 1 else 's'} -> {after} "
                 f"client{'' if after == 1 else 's'}"]
        if self.num_merged:
            parts.append(f"{self.num_merged} small/overflow groups merged into '{OTHER}'")
        if self.num_dropped_examples:
            parts.append(f"{self.num_dropped_examples} examples of groups still too small dropped")
        return "; ".join(parts)


def consolidate_groups(groups: np.ndarray, min_size: int = 1, max_groups: int = 0) -> GroupPlan:
    """Merge groups smaller than ``min_size`` into :data:`OTHER`, keep at most ``max_groups``
    groups (0 = no cap: the largest ``max_groups - 1`` stay, the rest join :data:`OTHER`).

    Parameters
    ----------
    groups : (N,) group of each example.
    min_size : minimum examples per resulting group (>= 1).
    max_groups : maximum number of resulting groups, 0 for no cap.

    Returns
    -------
    GroupPlan; ties in size are broken by group name so the result does not depend on order.
    """
    groups = np.asarray(groups).astype(str)
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)  # names sorted
    order = sorted(range(len(names)), key=lambda g: (-counts[g], names[g]))  # largest first
    big = [g for g in order if counts[g] >= min_size]
    cap = max_groups if max_groups > 0 else len(names)
    if len(big) > cap or (len(big) < len(names) and len(big) >= cap):
        big = big[: cap - 1]  # leave room for OTHER
    keep_group = np.zeros(len(names), dtype=bool)
    keep_group[big] = True
    new_names = np.where(keep_group, names, OTHER)
    new_groups = new_names[inverse]
    keep = np.ones(len(groups), dtype=bool)
    merged = int((~keep_group).sum())
    other_mask = ~keep_group[inverse]
    dropped = 0
    if merged and int(other_mask.sum()) < min_size:
        keep &= ~other_mask
        dropped = int(other_mask.sum())
        new_groups = np.where(keep, new_groups, "")
    return GroupPlan(new_groups, keep, len(names), merged, dropped)
