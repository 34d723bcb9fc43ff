"""Pre-declared memorization criteria, their counts, intervals and the
memorization capacity of a training-set-size series.

Two kinds of criterion are judged per synthetic (or held-out real) image:

* **Gu et al.'s ℓ2 ratio** ("On memorization in diffusion models", arXiv
  2310.02664): an image is memorized when its ℓ2 distance to the nearest
  training image is less than ``ratio`` (1/3) times its distance to the
  second nearest. :func:`nearest_l2` computes both distances exactly, with
  one change that 2D slices of 3D volumes need (the *neighbour exclusion*,
  see :func:`default_neighbour_slices`).
* **The paper's correlation criterion**: the best Pearson correlation with
  any training image exceeds a threshold, fixed (0.95, 0.99) or a
  percentile (p95, p99) of what held-out real images reach against the
  same training set. The correlation engine (:mod:`helpers.correlation`)
  computes the best correlations; here they are only compared.

A *flag array* holds one value per judged image: boolean, or float 1/0 with
NaN where the criterion cannot judge that image (a constant image has no
correlation; a one-image training set has no second neighbour). NaN images
count in neither n_images nor n_above.

Counts become a tidy table (:func:`criteria_table`: size, n_subjects,
group, criterion, n_images, n_above, fraction, Wilson 95 % interval); the training-set
coverage (:func:`coverage`) says how much of the training set leaks; and
:func:`memorization_capacity` reads the largest training-set size at which
a model still memorizes at least 90 % of its samples.

Modules: :mod:`.nearest` (exact ℓ2 neighbours), :mod:`.criteria` (flags,
thresholds, Wilson intervals, tables, coverage) and :mod:`.capacity`.
NumPy, SciPy and pandas only: no torch, no CuPy.
"""

from .capacity import Capacity, memorization_capacity
from .criteria import (
                       BASELINE_PERCENTILES,
                       CRITERION_THRESHOLDS,
                       FIXED_THRESHOLDS,
                       GU_RATIO,
                       TABLE_COLUMNS,
                       correlation_thresholds,
                       count_flags,
                       coverage,
                       coverage_table,
                       criteria_table,
                       exceedance_flags,
                       l2_ratio_flags,
                       wilson_interval,
)
from .nearest import FIELD_OF_VIEW_MM, SLICE_SPACING_MM, default_neighbour_slices, distinct_pictures, nearest_l2

__all__ = [
    "BASELINE_PERCENTILES", "CRITERION_THRESHOLDS", "Capacity", "FIELD_OF_VIEW_MM", "FIXED_THRESHOLDS", "GU_RATIO",
    "SLICE_SPACING_MM", "TABLE_COLUMNS", "correlation_thresholds", "count_flags", "coverage",
    "coverage_table", "criteria_table", "default_neighbour_slices", "distinct_pictures", "exceedance_flags", "l2_ratio_flags",
    "memorization_capacity", "nearest_l2", "wilson_interval",
]
