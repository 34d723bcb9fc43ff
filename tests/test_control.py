"""The planted-copy control read per kind of copy: a kind that falls below a
threshold is seen even when the others carry the total."""

from __future__ import annotations

import pandas as pd

from helpers.audit.control import control_by_kind


def test_control_by_kind_counts_each_kind_against_each_threshold():
    table = pd.DataFrame({
        "control_kind": ["copy", "copy", "shift", "shift", "noise"],
        "correlation": [1.0, 1.0, 0.95, 0.97, 0.99],
        "constant": [False] * 5,
        "found": [True, True, False, True, True],
        "source_defined": [True, True, True, True, False],   # the last one is blank in this measure: not scored
    })
    out = control_by_kind(table, {"fixed_0.95": 0.95, "baseline_p99": 0.98})
    by = out.set_index(["control_kind", "threshold_name"])
    assert list(out["control_kind"].unique()) == ["copy", "shift"]
    assert by.loc[("copy", "baseline_p99"), "n_above"] == 2 and by.loc[("copy", "baseline_p99"), "fraction"] == 1.0
    # strictly above: 0.95 does not exceed 0.95; a shift at 0.97 is missed at p99 = 0.98
    assert by.loc[("shift", "fixed_0.95"), "n_above"] == 1 and by.loc[("shift", "baseline_p99"), "n_above"] == 0
    assert by.loc[("shift", "baseline_p99"), "found_fraction"] == 0.5
    assert by.loc[("shift", "baseline_p99"), "min_correlation"] == 0.95
