"""What the engine returns: every synthetic image's top-k training matches."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class MatchResult:
    """Top-k training matches of every synthetic image.

    ``index[i, r]``/``correlation[i, r]``: the rank-``r+1`` training image of
    synthetic image ``i`` and its exact Pearson correlation (-1/NaN where
    there is none: a constant synthetic image, or fewer valid training images
    than k). ``constant``: synthetic images with zero variance;
    ``train_constant``: training images with zero variance (never matched).
    ``stats["arithmetic"]``/``stats["arithmetic_reason"]``: which path ran and
    why (also at the end of ``backend_note``).
    """

    index: np.ndarray
    correlation: np.ndarray
    constant: np.ndarray
    train_constant: np.ndarray
    backend: str
    backend_note: str
    pairs: int
    seconds: float
    stats: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.index.shape[1])

    @property
    def best_index(self) -> np.ndarray:
        return self.index[:, 0]

    @property
    def best_correlation(self) -> np.ndarray:
        return self.correlation[:, 0]

    @property
    def arithmetic(self) -> str:
        """"integer" (int8 products) or "float" (float32 products, exact re-score)."""
        return str(self.stats.get("arithmetic", "float"))

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else float("nan")

    def best_frame(self) -> pd.DataFrame:
        """One row per synthetic image: its best training match."""
        return pd.DataFrame({
            "synthetic_index": np.arange(len(self.index)),
            "train_index": self.best_index,
            "correlation": self.best_correlation,
            "constant": self.constant,
        })

    def topk_frame(self) -> pd.DataFrame:
        """One row per (synthetic image, rank) with a match; rank 1 = best."""
        n, k = self.index.shape
        frame = pd.DataFrame({
            "synthetic_index": np.repeat(np.arange(n), k),
            "rank": np.tile(np.arange(1, k + 1), n),
            "train_index": self.index.ravel(),
            "correlation": self.correlation.ravel(),
        })
        return frame[frame["train_index"] >= 0].reset_index(drop=True)
