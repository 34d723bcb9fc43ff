"""The reading rule: when a model counts as fitted at a size — declared in
the settings before any result, applied here the same way to every model.

A model is **fitted** when both hold:

* its images hold as much fine detail as real ones: the sharpness ratio
  (:mod:`.sharpness`) lies within ``[sharpness_low, sharpness_high]``
  (real held-out slices: 0.88–1.08; blur, speckle and the Gaussian control
  fall far outside);
* its images are no easier to tell from its training images than real
  unseen images are: the 1-NN two-sample accuracy against the training
  subset (full feature space) is at most the held-out images' own plus
  ``nn_margin``.

Why these two and not precision/recall or the logistic test: measured on
known generators (``benchmarks/probe_fit_measures.py``), precision and
coverage in the full feature space call the Gaussian control fitted, and in
the texture space they and the logistic test call a visibly blurred
StyleGAN fitted; the sharpness ratio separates both. The other measures are
still computed and shown, each with its verdict on the Gaussian control
(:func:`measure_check`): a measure that calls it fitted is marked as not fit
for purpose, never dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# how each measure would judge on its own, against the held-out images' value:
# "lower"/"higher" is the better direction, with the margin it is allowed
MEASURE_DIRECTIONS: dict[str, tuple[str, float]] = {
    "nn_accuracy": ("lower", 0.05),
    "texture_accuracy": ("lower", 0.05),
    "precision": ("higher", 0.10),
    "recall": ("higher", 0.10),
    "density": ("higher", 0.10),
    "coverage": ("higher", 0.10),
    "copying": ("lower", 2.0),          # C_T ≫ 0: farther from the training images than unseen ones (underfit)
}


@dataclass(frozen=True)
class FitRule:
    sharpness_low: float
    sharpness_high: float
    nn_margin: float

    def __post_init__(self):
        if not 0 < self.sharpness_low < 1 < self.sharpness_high:
            raise ValueError(f"fit rule: need 0 < sharpness_low < 1 < sharpness_high, got "
                             f"{self.sharpness_low} and {self.sharpness_high}")
        if not 0 <= self.nn_margin < 0.5:
            raise ValueError(f"fit rule: nn_margin must lie in [0, 0.5), got {self.nn_margin}")

    def judge(self, row: dict, held_out: dict) -> tuple[bool, str]:
        """(fitted, why) for one model's measures against the held-out images'."""
        reasons = []
        sharp = row["sharpness"]
        if not math.isfinite(sharp):
            reasons.append("sharpness undefined")
        elif sharp < self.sharpness_low:
            reasons.append(f"sharpness {sharp:.2f} < {self.sharpness_low:g} (blurred)")
        elif sharp > self.sharpness_high:
            reasons.append(f"sharpness {sharp:.2f} > {self.sharpness_high:g} (noisy)")
        limit = held_out["nn_accuracy"] + self.nn_margin
        if not row["nn_accuracy"] <= limit:
            reasons.append(f"1-NN accuracy {row['nn_accuracy']:.2f} > {limit:.2f} (told apart from its training images)")
        return (not reasons, "; ".join(reasons) if reasons else "fitted")


def measure_verdict(measure: str, value: float, held_out_value: float) -> bool:
    """Whether one measure alone would call a model fitted (its value no
    worse than the held-out images' by more than the measure's margin)."""
    direction, margin = MEASURE_DIRECTIONS[measure]
    if not (math.isfinite(value) and math.isfinite(held_out_value)):
        return False
    if direction == "lower":
        return value <= held_out_value + margin
    return value >= held_out_value - margin
