"""The memorization capacity of a training-set-size series: the largest
size at which a model still memorizes at least a target fraction of its
samples, with the sizes that bracket it."""

from __future__ import annotations

import dataclasses

import pandas as pd


@dataclasses.dataclass
class Capacity:
    """The memorization capacity of one group under one criterion."""

    group: str
    criterion: str
    target: float                 # the fraction of samples that must be memorized
    status: str                   # "bracketed", "reached at every size", "reached at the largest size"
                                  # (missed at a smaller one) or "not reached at any size"
    capacity: int | None          # largest size at which fraction ≥ target
    above: int | None             # smallest size tested above the capacity (target missed there)
    below: int | None             # largest size tested below the capacity
    monotone: bool                # reached exactly at the sizes up to the capacity
    exceptions: list[int]         # sizes below the capacity where the target was missed
    conservative: int | None      # largest size up to which the target is reached at every size
    sizes: list[int]
    fractions: list[float]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def message(self) -> str:
        pct = f"{100 * self.target:g} %"
        who = f"{self.group} ({self.criterion})"
        if self.status == "not reached at any size":
            return (f"{who}: fewer than {pct} of samples memorized at every size tested "
                    f"(smallest {self.sizes[0]}): capacity below {self.sizes[0]} images, if any")
        if self.status in ("reached at every size", "reached at the largest size"):
            every = "every size tested" if self.status == "reached at every size" else "the largest size tested"
            text = (f"{who}: at least {pct} of samples memorized at {every}: capacity ≥ "
                    f"{self.capacity} images (the largest size tested)")
        else:
            text = (f"{who}: at least {pct} memorized up to {self.capacity} training images, not at "
                    f"{self.above}: capacity between {self.capacity} and {self.above}")
        if not self.monotone:
            text += (f"; not monotone: the target was missed at smaller sizes {self.exceptions} "
                     f"(reached at every size only up to {self.conservative})")
        return text


def memorization_capacity(table: pd.DataFrame, criterion: str, group: str, fraction: float = 0.9) -> Capacity:
    """The largest training-set size at which at least ``fraction`` of the
    group's samples are memorized under ``criterion``, from a (concatenated)
    :func:`criteria_table`. Sizes where nothing was judged (n = 0) are
    skipped. Reports the bracketing sizes (``below`` the capacity and
    ``above`` it, where the target is missed), whether the series is
    monotone and, when it is not, the sizes below the capacity that miss
    the target and the ``conservative`` capacity (up to which every size
    reaches it)."""
    rows = table[(table["group"] == group) & (table["criterion"] == criterion)]
    rows = rows[rows["n_images"] > 0]
    if rows.empty:
        raise ValueError(f"no rows with n > 0 for group {group!r} and criterion {criterion!r}")
    if rows["size"].duplicated().any():
        dup = sorted(rows.loc[rows["size"].duplicated(), "size"].unique().tolist())
        raise ValueError(f"group {group!r}, criterion {criterion!r}: several rows for size(s) {dup}")
    rows = rows.sort_values("size")
    sizes = [int(s) for s in rows["size"]]
    fracs = [float(f) for f in rows["fraction"]]
    reached = [f >= fraction for f in fracs]
    base = dict(group=group, criterion=criterion, target=float(fraction), sizes=sizes, fractions=fracs)
    if not any(reached):
        return Capacity(status="not reached at any size", capacity=None, above=sizes[0], below=None,
                        monotone=True, exceptions=[], conservative=None, **base)
    last = max(i for i, r in enumerate(reached) if r)
    exceptions = [s for s, r in zip(sizes[:last], reached[:last]) if not r]
    first_miss = next((i for i, r in enumerate(reached) if not r), len(sizes))
    conservative = sizes[first_miss - 1] if first_miss > 0 else None
    if all(reached):
        status = "reached at every size"
    elif last == len(sizes) - 1:
        status = "reached at the largest size"
    else:
        status = "bracketed"
    return Capacity(status=status, capacity=sizes[last], above=sizes[last + 1] if last + 1 < len(sizes) else None,
                    below=sizes[last - 1] if last > 0 else None, monotone=not exceptions, exceptions=exceptions,
                    conservative=conservative, **base)
