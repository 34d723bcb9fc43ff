"""Adaptive discriminator augmentation (ADA, Karras et al. 2020) built from
kornia's differentiable augmentations.

Why: with a few thousand training images the discriminator of a GAN
memorizes the reals and its feedback to the generator collapses. ADA shows D
only augmented images (reals *and* fakes, so the generator never learns the
augmentations) and tunes the augmentation probability ``p`` from the
overfitting heuristic r_t = E[sign(D(real))]: if r_t is above the target
(0.6) D is too sure about reals and ``p`` goes up, otherwise down.

Every transform is differentiable with respect to its input (kornia warps
and arithmetic), so gradients reach the generator through augmented fakes
and R1 can be taken with respect to un-augmented reals.

The transforms are those of ADA's default 'bgc' pipeline that make sense
for grayscale (multi-channel) medical slices, plus optional cutout:

==========  =============================================  ==================================
name        ADA                                            here (kornia)
==========  =============================================  ==================================
xflip       flip with prob. 1/2, gated by p                RandomHorizontalFlip(p/2)
rotate90    k·90°, k uniform in 0..3, gated by p           RandomRotation90, k uniform in 0..3
xint        integer shift ≤ 1/8 of the size, reflect pad   RandomAffine translate, rounded,
                                                           reflection padding
scale       isotropic, 2^N(0, 0.2)                         RandomAffine scale U(0.8, 1.25)
                                                           (same spread in log2), reflection pad
brightness  add N(0, 0.2) in [-1, 1]                       RandomBrightness: add U(-0.2, 0.2)
contrast    multiply by 2^N(0, 0.5) around 0 (mid-gray)    RandomContrast: multiply U(0.5, 1.5)
cutout      zero a 1/2 × 1/2 rectangle (mid-gray)          RandomErasing, area 1/4, square, 0
==========  =============================================  ==================================

Hue, saturation and luma flip have no meaning for grayscale modalities and are
left out; arbitrary rotation, anisotropic scaling and fractional translation
are left out because the issue asks for the leak-safe integer/flip group
plus isotropic scaling. Brightness and contrast act on all channels of an
image alike, so the relation between modalities is kept.

Each transform draws its own per-image Bernoulli(p) gate and its parameters
from torch's global generator, so a training step that seeds that generator
is exactly reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
from torch import nn

#: The transforms this module knows, in the order they are applied.
TRANSFORMS: tuple[str, ...] = ("xflip", "rotate90", "xint", "scale", "brightness", "contrast", "cutout")
#: ADA's 'bgc' pipeline restricted to grayscale-meaningful transforms (the default).
DEFAULT_TRANSFORMS: tuple[str, ...] = ("xflip", "rotate90", "xint", "scale", "brightness", "contrast")


class _IntegerTranslate(K.RandomAffine):
    """kornia's random translation rounded to whole pixels (ADA's 'xint'):
    an integer shift moves pixels without resampling, so it cannot blur."""

    def compute_transformation(self, input, params, flags):  # kornia's signature
        params = dict(params, translations=params["translations"].round())
        return super().compute_transformation(input, params, flags)


def _make(name: str) -> tuple[nn.Module, float]:
    """The kornia module for transform ``name`` and the factor by which ADA's
    ``p`` is scaled for it (xflip: the gated transform is a fair coin)."""
    if name == "xflip":
        return K.RandomHorizontalFlip(p=1.0), 0.5
    if name == "rotate90":
        # kornia rounds a uniform draw; (-1.5, 2.5) gives k in {-1, 0, 1, 2} ≡ {3, 0, 1, 2} equally often
        return K.RandomRotation90(times=(-1.5, 2.5), p=1.0), 1.0
    if name == "xint":
        return _IntegerTranslate(degrees=0.0, translate=(0.125, 0.125), padding_mode="reflection", p=1.0), 1.0
    if name == "scale":
        return K.RandomAffine(degrees=0.0, scale=(0.8, 1.25), padding_mode="reflection", p=1.0), 1.0
    if name == "brightness":
        return K.RandomBrightness(brightness=(0.8, 1.2), clip_output=False, p=1.0), 1.0
    if name == "contrast":
        return K.RandomContrast(contrast=(0.5, 1.5), clip_output=False, p=1.0), 1.0
    if name == "cutout":
        return K.RandomErasing(scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0.0, p=1.0), 1.0
    raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(TRANSFORMS)}")


def parse_transforms(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"xflip,rotate90"`` or a list → validated names in the canonical order;
    ``""``/``None``/``"none"`` → no augmentation."""
    if spec is None:
        return ()
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n and n != "none"]
    unknown = sorted(set(names) - set(TRANSFORMS))
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; known: {', '.join(TRANSFORMS)}")
    return tuple(n for n in TRANSFORMS if n in names)


class AdaptiveAugment(nn.Module):
    """Augment a batch in [-1, 1] with probability ``p`` per transform and
    image, and adapt ``p`` toward ``target`` (ADA).

    Use: ``x = aug(x)`` before every D evaluation (reals and fakes);
    ``aug.accumulate(real_logits)`` after each D pass on reals; every
    ``interval`` steps ``aug.adjust(batch_size * interval)``.
    ``target=None`` keeps ``p`` fixed (plain differentiable augmentation).
    """

    def __init__(
        self,
        transforms: str | Sequence[str] | None = DEFAULT_TRANSFORMS,
        p: float = 0.0,
        target: float | None = 0.6,
        speed_kimg: float = 500.0,
    ) -> None:
        super().__init__()
        self.names = parse_transforms(transforms)
        built = [_make(n) for n in self.names]
        self.transforms = nn.ModuleList([m for m, _ in built])
        self.p_factors = [f for _, f in built]
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"augment p must lie in [0, 1], got {p}")
        self.p = float(p)
        self.target = None if target is None else float(target)
        self.speed_kimg = float(speed_kimg)
        self._sign_sum: torch.Tensor | float = 0.0
        self._sign_count = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.p <= 0.0 or not self.names:
            return images
        dtype = images.dtype
        x = images.float()
        for transform, factor in zip(self.transforms, self.p_factors):
            # Gate each image ourselves and transform only the chosen ones:
            # kornia would transform the whole batch and then blend, which
            # costs the full price at the small p that ADA mostly runs at.
            chosen = (torch.rand(x.shape[0], device=x.device) < self.p * factor).nonzero().squeeze(1)
            if len(chosen):
                x = x.index_copy(0, chosen, transform(x.index_select(0, chosen)))
        return x.to(dtype)

    # ------------------------------------------------------------------
    # The controller
    # ------------------------------------------------------------------
    @torch.no_grad()
    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Collect sign(D(real)) (kept on the device: no synchronization)."""
        self._sign_sum = self._sign_sum + real_logits.detach().float().sign().sum()
        self._sign_count = self._sign_count + int(real_logits.numel())

    def real_sign(self) -> float | None:
        """r_t = mean sign of D on reals since the last adjustment."""
        if self._sign_count == 0:
            return None
        return float(self._sign_sum) / self._sign_count

    def adjust(self, n_images: int) -> float:
        """Move ``p`` by ``n_images / (speed_kimg·1000)`` up if r_t > target,
        down otherwise (ADA: p can go 0 → 1 in ``speed_kimg`` thousand images),
        clamp to [0, 1], reset the statistic and return the new ``p``."""
        self._average_over_processes()
        r_t = self.real_sign()
        if self.target is not None and r_t is not None:
            step = float(n_images) / (self.speed_kimg * 1000.0)
            direction = (r_t > self.target) - (r_t < self.target)
            self.p = min(max(self.p + direction * step, 0.0), 1.0)
        self._sign_sum, self._sign_count = 0.0, 0
        return self.p

    def _average_over_processes(self) -> None:
        """In a torch.distributed job, the statistic of all processes: sum
        and count averaged (their ratio is the pooled r_t); every process
        then holds the same values, which is also what a checkpoint saves."""
        from ..parallel import average, rank_world

        if rank_world()[1] > 1:
            pooled = average(torch.tensor([float(self._sign_sum), float(self._sign_count)], dtype=torch.float64))
            self._sign_sum, self._sign_count = float(pooled[0]), float(pooled[1])

    def controller_state(self) -> dict:
        """What a checkpoint must hold to continue exactly: ``p`` and the
        statistic collected since the last adjustment (the reference
        implementation restarts both on resume). With several processes a
        collective call: every process must make it."""
        self._average_over_processes()
        return {"p": self.p, "sign_sum": float(self._sign_sum), "sign_count": self._sign_count}

    def load_controller_state(self, state: dict) -> None:
        self.p = float(state["p"])
        self._sign_sum = float(state["sign_sum"])
        self._sign_count = float(state["sign_count"])  # pooled over processes it may be a fraction

    def extra_repr(self) -> str:
        return f"transforms={','.join(self.names) or 'none'}, p={self.p:.4f}, target={self.target}"
