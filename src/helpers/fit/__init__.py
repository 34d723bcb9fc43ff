"""How well a generator learnt its data: fit measures that need no
downloaded weights, and the underfitting control.

A memorization number means little for a model that never learnt its data
(Stein et al., NeurIPS 2023: no memorization metric separates copying from
underfitting). Every memorization number of the study is therefore read
beside fit numbers measured here, with three references: real held-out
images (a good generator that copies nothing), the optimal denoiser (a
perfect copier) and :class:`GaussianControl` (a generator that knows only
the training images' mean and covariance: unfitted by construction).

Modules: :mod:`.features` (the fixed random-CNN feature space, standardized
on real images only), :mod:`.measures` (precision/recall/density/coverage,
the classifier two-sample test, Meehan et al.'s data-copying statistic) and
:mod:`.controls` (the Gaussian control), :mod:`.sharpness` (fine detail
against the training images), :mod:`.reading` (the pre-declared rule: when
a model counts as fitted) and :mod:`.table` (one size's fit table).
"""

from .controls import GaussianControl
from .features import EMBEDDING_SEED, EMBEDDINGS, FeatureSpace, raw_embedding
from .measures import (
                       PRDC_NAMES,
                       CopyingResult,
                       TwoSampleResult,
                       classifier_two_sample,
                       copying_statistic,
                       nearest_neighbour_two_sample,
                       prdc,
)
from .reading import MEASURE_DIRECTIONS, FitRule
from .sharpness import SharpnessResult, laplacian_energy, sharpness_ratio
from .table import COPIER, HELD_OUT, UNDERFIT_CONTROL, fit_table, measure_check, reference_samples

__all__ = [
    "COPIER", "HELD_OUT", "MEASURE_DIRECTIONS", "UNDERFIT_CONTROL", "FitRule", "SharpnessResult",
    "fit_table", "laplacian_energy", "measure_check", "reference_samples", "sharpness_ratio",
    "EMBEDDING_SEED", "EMBEDDINGS", "PRDC_NAMES", "CopyingResult", "FeatureSpace", "GaussianControl", "TwoSampleResult",
    "classifier_two_sample", "copying_statistic", "nearest_neighbour_two_sample", "prdc", "raw_embedding",
]
