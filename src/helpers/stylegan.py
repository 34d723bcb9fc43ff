"""StyleGAN2 with adaptive discriminator augmentation: networks, training and
per-seed sampling.

Why written here: no maintained StyleGAN package on PyPI runs on a CPU-only
machine, so the model of Karras et al. (StyleGAN2, 2020; ADA, 2020) is
re-implemented from the papers and the facts of NVlabs' public
``stylegan2-ada-pytorch`` (no code copied): equalized learning rate
everywhere; a mapping network z → w with a low learning-rate multiplier and
a tracked average w (for truncation ψ); a synthesis network from a learned
4×4 constant with modulated/demodulated 3×3 convolutions, per-layer noise
with learned strength and skip (toRGB) outputs summed over resolutions; a
residual discriminator with minibatch standard deviation; non-saturating
logistic loss, lazy R1 on reals, optional path-length regularization, style
mixing; an EMA generator; ADA (``helpers.stylegan_augment``).

Faithful to the reference, with these differences (all documented where
they live): resampling filters are applied with plain (transposed/strided)
convolutions instead of custom CUDA kernels; mixed precision uses bfloat16
(no loss scaling needed) in the top ``num_fp16_res`` resolutions; ADA's
``p`` is clamped to [0, 1]; every random draw of a training step comes from
generators seeded by ``(seed, step)``, so a resumed run continues
bit-for-bit on CPU (the reference restarts ``p`` and the counters);
training runs on one device. ``accelerate`` is not used: with two
optimizers, lazily interleaved regularization phases, ``autograd.grad``
penalties, bfloat16 by block and our own checkpoint state, plain torch on
one device is the simpler code.

Results under ``results_dir/stylegan/`` (see :func:`train`):
``checkpoints/step_*.safetensors``, ``loss_log.csv``, ``grids/step_*.png``,
``generator.safetensors`` + ``generator.json`` (the EMA generator, no
pickle), ``params.yaml`` (written by the notebook).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints
from .common import progress as progress_bar
from .common import atomic_path, read_json, stable_hash, write_json
from .config import TrainStyleGANSettings
from .sampling import sample_to_npy, samples_path, to_uint8
from .stylegan_augment import AdaptiveAugment

# ==========================================================================
# Building blocks (equalized learning rate, FIR resampling)
# ==========================================================================

_LRELU_GAIN = math.sqrt(2.0)


def _fir_kernel(device=None) -> torch.Tensor:
    """StyleGAN's [1, 3, 3, 1] low-pass filter, 4×4, summing to one."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0], device=device)
    f = torch.outer(f, f)
    return f / f.sum()


def _depthwise(f: torch.Tensor, channels: int, dtype: torch.dtype) -> torch.Tensor:
    return f.to(dtype)[None, None].expand(channels, 1, *f.shape)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """×2 upsampling: zero insertion then the FIR filter (gain 4), written as
    one transposed depthwise convolution."""
    c = x.shape[1]
    return F.conv_transpose2d(x, _depthwise(f * 4, c, x.dtype), stride=2, padding=1, groups=c)


def downsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """FIR filter then keep every second pixel (anti-aliased ×½)."""
    c = x.shape[1]
    return F.conv2d(F.pad(x, [1, 1, 1, 1]), _depthwise(f, c, x.dtype), stride=2, groups=c)


def _blur(x: torch.Tensor, f: torch.Tensor, pad: int, gain: float = 1.0) -> torch.Tensor:
    c = x.shape[1]
    return F.conv2d(F.pad(x, [pad] * 4), _depthwise(f * gain, c, x.dtype), groups=c)


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor, up: bool = False, down: bool = False) -> torch.Tensor:
    """'Same' convolution with optional ×2 up- or downsampling (StyleGAN2's
    conv2d_resample): up = transposed stride-2 conv then FIR; down = FIR then
    stride-2 conv; output size is exactly 2H, H/2 or H."""
    k = w.shape[-1]
    if up:
        if k != 3:
            raise ValueError("upsampling convolutions are 3×3 in StyleGAN2")
        x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)  # 2H + 1
        return _blur(x, f, pad=1, gain=4.0)  # 2H
    if down:
        if k == 1:
            return F.conv2d(downsample2d(x, f), w)
        return F.conv2d(_blur(x, f, pad=2), w, stride=2)
    return F.conv2d(x, w, padding=k // 2)


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float = 1.0,
             clamp: float | None = None) -> torch.Tensor:
    """Add bias (over dim 1), apply the activation with its gain, clamp."""
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        gain = gain * _LRELU_GAIN
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnected(nn.Module):
    """Equalized-lr linear layer: weights stored N(0, 1)/lr_mul and scaled at
    run time, so Adam's step size is the same for every layer."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, self.activation)


class Conv2dLayer(nn.Module):
    """Equalized-lr convolution with optional ×2 down/upsampling (D)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: bool = False, down: bool = False,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", _fir_kernel(), persistent=False)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=gain, clamp=clamp)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, f: torch.Tensor,
                     noise: torch.Tensor | None = None, up: bool = False, demodulate: bool = True) -> torch.Tensor:
    """StyleGAN2's weight (de)modulation, in its batched form: scale the
    input channels by the style s_i, convolve with the shared weight, and
    scale each output channel by 1/σ_o with σ_o = sqrt(Σ_ik (w_oik s_i)²),
    which is what a per-sample modulated weight would give. Demodulation
    keeps unit-variance activations for unit-variance inputs (no AdaIN and
    no droplet artifacts).
    """
    batch = x.shape[0]
    styles32 = styles.float()
    dcoefs = None
    if demodulate:
        w = weight.float()[None] * styles32[:, None, :, None, None]  # [B, O, I, k, k]
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [B, O], in fp32
    x = x * styles32.to(x.dtype).reshape(batch, -1, 1, 1)
    x = conv2d_resample(x, weight.to(x.dtype), f, up=up)
    if dcoefs is not None:
        x = x * dcoefs.to(x.dtype).reshape(batch, -1, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


# ==========================================================================
# Generator
# ==========================================================================

def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z → w through ``num_layers`` leaky-ReLU layers (lr × ``lr_multiplier``);
    tracks the average w for the truncation trick."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnected(a, b, activation="lrelu", lr_multiplier=lr_multiplier)
            for a, b in zip(features[:-1], features[1:])
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False) -> torch.Tensor:
        x = normalize_2nd_moment(z.float())
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws = torch.cat([self.w_avg.lerp(ws[:, :cutoff], truncation_psi), ws[:, cutoff:]], dim=1)
        return ws


def _compute_dtype(use_bf16: bool, like: torch.Tensor) -> torch.dtype:
    """bfloat16 for a mixed-precision block on a GPU, else float32 (CPU
    bfloat16 convolutions are slower than float32 ones)."""
    return torch.bfloat16 if (use_bf16 and like.is_cuda) else torch.float32


class SynthesisLayer(nn.Module):
    """Modulated 3×3 conv (optionally ×2 up) + noise with learned strength +
    bias + leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.register_buffer("resample_filter", _fir_kernel(), persistent=False)
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random",
                noise_generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        styles = self.affine(w)
        noise = None
        shape = (x.shape[0], 1, self.resolution, self.resolution)
        if noise_mode == "random":
            if noise_generators is None:
                raw = torch.randn(shape, device=x.device)
            else:  # one generator per image: the image does not depend on its batch
                raw = torch.stack([torch.randn(shape[1:], generator=g, device=g.device) for g in noise_generators])
                raw = raw.to(x.device)
            noise = raw * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        x = modulated_conv2d(x, self.weight, styles, self.resample_filter, noise=noise, up=self.up)
        return bias_act(x, self.bias, "lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """1×1 modulated conv (no demodulation) to the image channels: the skip
    output of one resolution."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", _fir_kernel(), persistent=False)
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, self.resample_filter, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network (skip architecture)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 use_bf16: bool = False, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.use_bf16 = in_channels, resolution, use_bf16
        self.register_buffer("resample_filter", _fir_kernel(), persistent=False)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=True, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(self, x, img, ws, noise_mode="random", noise_generators=None):
        dtype = _compute_dtype(self.use_bf16, ws)
        w_iter = iter(ws.unbind(dim=1))
        if self.conv0 is None:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x.to(dtype), next(w_iter), noise_mode, noise_generators)
        x = self.conv1(x, next(w_iter), noise_mode, noise_generators)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter)).float()
        return x, (y if img is None else img + y)


def channels_per_resolution(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """StyleGAN2's width rule: min(channel_base / res, channel_max) at every
    resolution 4 … ``resolution``."""
    return {2**i: min(channel_base // 2**i, channel_max) for i in range(2, int(math.log2(resolution)) + 1)}


def _check_resolution(resolution: int) -> None:
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"StyleGAN needs a power-of-two image size ≥ 8, got {resolution}")


class Generator(nn.Module):
    """z (``z_dim``) → image (``img_channels``×``resolution``²) in [-1, 1]."""

    def __init__(self, resolution: int, img_channels: int, z_dim: int = 512, w_dim: int = 512,
                 mapping_layers: int = 8, mapping_lr_multiplier: float = 0.01, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, conv_clamp: float | None = None) -> None:
        super().__init__()
        _check_resolution(resolution)
        self.kwargs = dict(resolution=resolution, img_channels=img_channels, z_dim=z_dim, w_dim=w_dim,
                           mapping_layers=mapping_layers, mapping_lr_multiplier=mapping_lr_multiplier,
                           channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
                           conv_clamp=conv_clamp)
        self.resolution, self.img_channels, self.z_dim, self.w_dim = resolution, img_channels, z_dim, w_dim
        ch = channels_per_resolution(resolution, channel_base, channel_max)
        bf16_from = max(2 ** (int(math.log2(resolution)) + 1 - num_fp16_res), 8) if num_fp16_res else resolution * 2
        self.blocks = nn.ModuleList(
            SynthesisBlock(ch[res // 2] if res > 4 else 0, ch[res], w_dim, res, img_channels,
                           use_bf16=res >= bf16_from, conv_clamp=conv_clamp)
            for res in ch
        )
        # consecutive blocks share one w: block b uses ws[i : i + num_conv + 1]
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random",
                  noise_generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        x = img = None
        i = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, i:i + block.num_conv + 1], noise_mode, noise_generators)
            i += block.num_conv
        return img

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random", noise_generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        ws = self.mapping(z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode, noise_generators)


# ==========================================================================
# Discriminator
# ==========================================================================

class MinibatchStd(nn.Module):
    """Append the standard deviation over groups of ``group_size`` images
    (averaged over channels and pixels) as an extra feature map, so that D
    can see a lack of variety (mode collapse)."""

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(f"minibatch-std: batch of {n} is not a multiple of the group size {g}")
        f = self.num_channels
        y = x.float().reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)
        y = y.repeat(g, 1, h, w)
        return torch.cat([x, y.to(x.dtype)], dim=1)


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3×3 convs (the second ×½) plus a 1×1 ×½ skip,
    summed with gain √½; the first block also has the fromRGB layer."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 use_bf16: bool = False, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.use_bf16 = use_bf16
        self.fromrgb = (Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
                        if in_channels == 0 else None)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=True, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(self.use_bf16, x)
        x = x.to(dtype)
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class Discriminator(nn.Module):
    """Image (``img_channels``×``resolution``²) → one logit per image."""

    def __init__(self, resolution: int, img_channels: int, channel_base: int = 32768, channel_max: int = 512,
                 mbstd_group: int = 4, num_fp16_res: int = 0, conv_clamp: float | None = None) -> None:
        super().__init__()
        _check_resolution(resolution)
        self.kwargs = dict(resolution=resolution, img_channels=img_channels, channel_base=channel_base,
                           channel_max=channel_max, mbstd_group=mbstd_group, num_fp16_res=num_fp16_res,
                           conv_clamp=conv_clamp)
        ch = channels_per_resolution(resolution, channel_base, channel_max)
        bf16_from = max(2 ** (int(math.log2(resolution)) + 1 - num_fp16_res), 8) if num_fp16_res else resolution * 2
        resolutions = [r for r in sorted(ch, reverse=True) if r > 4]
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(ch[r] if r < resolution else 0, ch[r], ch[r // 2], img_channels,
                               use_bf16=r >= bf16_from, conv_clamp=conv_clamp)
            for r in resolutions
        )
        c4 = ch[4]
        self.mbstd = MinibatchStd(mbstd_group, 1)
        self.conv = Conv2dLayer(c4 + 1, c4, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnected(c4 * 16, c4, activation="lrelu")
        self.out = FullyConnected(c4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = img
        for block in self.blocks:
            x = block(x)
        x = self.conv(self.mbstd(x.float()))
        return self.out(self.fc(x.flatten(1))).squeeze(1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_summary(config: TrainStyleGANSettings, image_shape: tuple[int, int, int]) -> pd.DataFrame:
    """Widths per resolution and parameter counts of G and D for ``config``
    on images of ``image_shape`` (C, H, W), built on the meta device (no
    memory, instant even at 256²)."""
    channels, res, _ = image_shape
    with torch.device("meta"):
        G = Generator(res, channels, config.z_dim, config.w_dim, config.mapping_layers,
                      config.mapping_lr_multiplier, config.channel_base, config.channel_max)
        D = Discriminator(res, channels, config.channel_base, config.channel_max, config.mbstd_group)
    widths = channels_per_resolution(res, config.channel_base, config.channel_max)
    rows = [{"part": f"width at {r}²", "value": w} for r, w in widths.items()]
    rows += [{"part": "w vectors (num_ws)", "value": G.num_ws},
             {"part": "mapping parameters", "value": count_parameters(G.mapping)},
             {"part": "generator parameters", "value": count_parameters(G)},
             {"part": "discriminator parameters", "value": count_parameters(D)}]
    return pd.DataFrame(rows)


# ==========================================================================
# Configuration
# ==========================================================================

# The settings of a run: helpers.config.TrainStyleGANSettings (one schema, torch-free).


# ==========================================================================
# Training data
# ==========================================================================

class TrainingImages:
    """``data/train.npy`` (uint8 N×C×H×W, memory-mapped) drawn in shuffled
    epochs; the batch of step ``s`` depends only on ``(seed, s)``."""

    def __init__(self, results_dir: str | os.PathLike, seed: int) -> None:
        data = Path(results_dir) / "data"
        array_path, meta_path = data / "train.npy", data / "meta.json"
        for path in (array_path, meta_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; run notebook 01 (prepare data) first")
        self.images = np.load(array_path, mmap_mode="r")
        meta = read_json(meta_path)
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"{array_path}: expected uint8 N×C×H×W, got {self.images.dtype} {self.images.shape}")
        n, c, h, w = self.images.shape
        channels = meta.get("channels")
        n_channels = len(channels) if isinstance(channels, list) else int(channels)
        if (c, h, w) != (n_channels, meta["image_size"], meta["image_size"]):
            raise ValueError(f"{array_path}: shape {self.images.shape} disagrees with {meta_path} "
                             f"(channels {channels}, image_size {meta['image_size']})")
        if n == 0:
            raise ValueError(f"{array_path}: no training images")
        self.meta, self.seed = meta, int(seed)
        self.channel_names = channels if isinstance(channels, list) else [f"ch{i}" for i in range(c)]
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self))
        return self._perms[epoch]

    def batch(self, step: int, batch_size: int, mirror: bool) -> np.ndarray:
        """uint8 batch of training step ``step`` (x-flipped at random when
        ``mirror``: the authors' --mirror=1)."""
        pos = step * batch_size + np.arange(batch_size)
        epochs, within = pos // len(self), pos % len(self)
        idx = np.array([self._perm(int(e))[i] for e, i in zip(epochs, within)])
        order = np.argsort(idx, kind="stable")  # sorted reads are kinder to a memory map
        out = np.empty((batch_size, *self.shape), dtype=np.uint8)
        out[order] = self.images[idx[order]]
        if mirror:
            flip = np.random.default_rng([self.seed, step, 1]).random(batch_size) < 0.5
            out[flip] = out[flip][..., ::-1]
        return out


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1, dtype=np.uint64)[0] >> 1)


# ==========================================================================
# Training
# ==========================================================================

LOG_COLUMNS = ("step", "images_seen", "kimg", "loss_G", "loss_D", "r1", "pl", "augment_p", "real_sign",
               "D_real", "D_fake", "images_per_s", "time_s")


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


class StyleGANTrainer:
    """G, D, G_ema, their Adam optimizers (with lazy-regularization
    corrections), the ADA pipeline and the per-step logic. :func:`train`
    drives it; tests call :meth:`step` directly."""

    def __init__(self, config: TrainStyleGANSettings, image_shape: tuple[int, int, int], seed: int = 0,
                 device: str | torch.device | None = None) -> None:
        self.cfg, self.seed = config, int(seed)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        channels, res, res_w = image_shape
        if res != res_w:
            raise ValueError(f"StyleGAN needs square images, got {image_shape}")
        c = config
        torch.manual_seed(self.seed)  # initial weights depend on the seed only
        fp16 = c.num_fp16_res if c.mixed_precision else 0
        self.G = Generator(res, channels, c.z_dim, c.w_dim, c.mapping_layers, c.mapping_lr_multiplier,
                           c.channel_base, c.channel_max, fp16, c.conv_clamp).to(self.device)
        self.D = Discriminator(res, channels, c.channel_base, c.channel_max, c.mbstd_group, fp16,
                               c.conv_clamp).to(self.device)
        self.G_ema = Generator(**self.G.kwargs).to(self.device).eval()
        self.G_ema.load_state_dict(self.G.state_dict())
        _requires_grad(self.G_ema, False)
        self.G.train()
        self.D.train()
        _requires_grad(self.G, False)
        _requires_grad(self.D, False)

        def adam(module, lr, interval):
            # lazy regularization: the main step's lr and betas are corrected
            # for the regularizer being applied only every `interval` steps
            ratio = interval / (interval + 1) if interval else 1.0
            return torch.optim.Adam(module.parameters(), lr=lr * ratio,
                                    betas=(c.beta1**ratio, c.beta2**ratio), eps=1e-8)

        self.opt_G = adam(self.G, c.lr_g, c.pl_interval if c.pl_weight > 0 else 0)
        self.opt_D = adam(self.D, c.lr_d, c.r1_interval if c.r1_gamma > 0 else 0)
        self.augment = AdaptiveAugment(c.augment, p=c.augment_p, target=c.ada_target, speed_kimg=c.ada_kimg)
        self.pl_mean = torch.zeros([], device=self.device)
        self.step_count = 0
        self.time_s = 0.0

    # ------------------------------------------------------------------
    def run_G(self, z: torch.Tensor, update_w_avg: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate with style mixing: with probability ``style_mixing_prob``
        the ws after a random cutoff come from a second latent."""
        ws = self.G.mapping(z, update_w_avg=update_w_avg)
        if self.cfg.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            cutoff = torch.randint(1, num_ws, [], device=z.device)
            mix = torch.rand([], device=z.device) < self.cfg.style_mixing_prob
            cutoff = torch.where(mix, cutoff, torch.full_like(cutoff, num_ws))
            ws2 = self.G.mapping(torch.randn_like(z))
            take2 = (torch.arange(num_ws, device=z.device) >= cutoff)[None, :, None]
            ws = torch.where(take2, ws2, ws)
        return self.G.synthesis(ws, noise_mode="random"), ws

    def run_D(self, img: torch.Tensor) -> torch.Tensor:
        return self.D(self.augment(img))

    def _reals(self, data: TrainingImages, step: int) -> torch.Tensor:
        batch = data.batch(step, self.cfg.batch_size, self.cfg.mirror)
        return torch.from_numpy(batch).to(self.device, non_blocking=True).float() / 127.5 - 1.0

    def step(self, data: TrainingImages) -> dict[str, torch.Tensor]:
        """One training iteration (phases Gmain, Greg, Dmain, Dreg as in
        StyleGAN2-ADA), then EMA and ADA updates. Returns detached stats."""
        c, s = self.cfg, self.step_count
        torch.manual_seed(_step_seed(self.seed, s))  # every draw of this step: z, noise, augmentation
        reals = self._reals(data, s)
        b, dev = c.batch_size, self.device
        stats: dict[str, torch.Tensor] = {}

        # -- G main: non-saturating loss softplus(-D(G(z)))
        _requires_grad(self.G, True)
        self.opt_G.zero_grad(set_to_none=True)
        fake, _ = self.run_G(torch.randn(b, c.z_dim, device=dev))
        loss_G = F.softplus(-self.run_D(fake)).mean()
        loss_G.backward()
        self.opt_G.step()
        stats["loss_G"] = loss_G.detach()

        # -- G reg: path length, lazily every pl_interval steps
        if c.pl_weight > 0 and s % c.pl_interval == 0:
            self.opt_G.zero_grad(set_to_none=True)
            n = max(b // c.pl_batch_shrink, 1)
            fake, ws = self.run_G(torch.randn(n, c.z_dim, device=dev))
            pl_noise = torch.randn_like(fake) / math.sqrt(fake.shape[2] * fake.shape[3])
            (grads,) = torch.autograd.grad((fake * pl_noise).sum(), ws, create_graph=True)
            lengths = grads.square().sum(2).mean(1).sqrt()
            pl_mean = self.pl_mean.lerp(lengths.mean(), c.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            penalty = (lengths - pl_mean).square()
            (fake[:, 0, 0, 0] * 0 + penalty * c.pl_weight).mean().mul(c.pl_interval).backward()
            self.opt_G.step()
            stats["pl"] = penalty.mean().detach()
        _requires_grad(self.G, False)

        # -- D main: softplus(D(fake)) + softplus(-D(real))
        _requires_grad(self.D, True)
        self.opt_D.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake, _ = self.run_G(torch.randn(b, c.z_dim, device=dev))
        logits_fake = self.run_D(fake)
        logits_real = self.run_D(reals)
        self.augment.accumulate(logits_real)
        loss_D = F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
        loss_D.backward()
        self.opt_D.step()
        stats.update(loss_D=loss_D.detach(), D_real=logits_real.detach().mean(), D_fake=logits_fake.detach().mean(),
                     real_sign=logits_real.detach().sign().mean())

        # -- D reg: R1 = γ/2 ‖∇_x D(x)‖² on (un-augmented) reals, lazily
        if c.r1_gamma > 0 and s % c.r1_interval == 0:
            self.opt_D.zero_grad(set_to_none=True)
            reals_r1 = reals.detach().requires_grad_(True)
            logits = self.run_D(reals_r1)
            self.augment.accumulate(logits)
            (grads,) = torch.autograd.grad(logits.sum(), reals_r1, create_graph=True)
            r1 = grads.square().sum(dim=[1, 2, 3])
            (logits * 0 + r1 * (c.r1_gamma / 2)).mean().mul(c.r1_interval).backward()
            self.opt_D.step()
            stats["r1"] = r1.mean().detach()
        _requires_grad(self.D, False)

        # -- EMA of G's weights (half-life ema_kimg, ramped up at the start)
        images_before = s * b
        ema_nimg = c.ema_kimg * 1000
        if c.ema_rampup:
            ema_nimg = min(ema_nimg, images_before * c.ema_rampup)
        beta = 0.5 ** (b / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, buf in zip(self.G_ema.buffers(), self.G.buffers()):
                b_ema.copy_(buf)

        self.step_count += 1
        # -- ADA: adjust p from sign(D(real)) every ada_interval steps
        if self.step_count % c.ada_interval == 0:
            self.augment.adjust(b * c.ada_interval)
        return stats

    # ------------------------------------------------------------------
    def state(self) -> dict:
        """Everything a bit-exact resume needs, for helpers.checkpoints."""
        return {
            "step": self.step_count,
            "images_seen": self.step_count * self.cfg.batch_size,
            "time_s": self.time_s,
            "config": self.cfg.identity(),
            "config_hash": stable_hash(self.cfg.identity()),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "pl_mean": self.pl_mean,
            "ada": self.augment.controller_state(),
            "rng": checkpoints.rng_state(),
        }

    def load_state(self, state: Mapping[str, Any], source: str = "checkpoint") -> None:
        wanted = stable_hash(self.cfg.identity())
        if state.get("config_hash") != wanted:
            old, new = state.get("config", {}), self.cfg.identity()
            diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
            raise ValueError(
                f"{source}: written by a run with other settings {diff} (old, new); delete that "
                "stylegan/checkpoints folder or use another results_dir to start afresh"
            )
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(state[name])
        self.opt_G.load_state_dict(state["opt_G"])
        self.opt_D.load_state_dict(state["opt_D"])
        self.pl_mean.copy_(state["pl_mean"])
        self.augment.load_controller_state(state["ada"])
        self.step_count = int(state["step"])
        self.time_s = float(state["time_s"])
        checkpoints.set_rng_state(state["rng"])


# ==========================================================================
# Sampling from a generator (shared by the training grids and notebook 04)
# ==========================================================================

def latents_for_seeds(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """z of each seed exactly as the authors' generate script draws it:
    ``np.random.RandomState(seed).randn(z_dim)``."""
    return torch.from_numpy(np.stack([np.random.RandomState(int(s)).randn(z_dim) for s in seeds])).float()


@torch.no_grad()
def generate_images(G: Generator, seeds: Sequence[int], truncation_psi: float = 1.0,
                    noise_mode: str = "const", batch_invariant: bool = True) -> np.ndarray:
    """uint8 images (len(seeds), C, H, W), each a function of its seed only.

    noise_mode 'const' (default, as the authors' generate script) uses the
    generator's fixed noise buffers; 'random' draws each image's per-layer
    noise from a torch generator seeded with its seed; 'none' drops noise.

    ``batch_invariant`` runs the network one image at a time: BLAS and
    convolution kernels sum in a batch-size-dependent order, which moves a
    few pixels by one grey level when the same seed is generated in a
    batch of another size. One at a time, an image is bit-identical however
    it is batched (a GPU then runs below its throughput; ``False`` batches).
    """
    device = next(G.parameters()).device
    z = latents_for_seeds(seeds, G.z_dim).to(device)
    generators = None
    if noise_mode == "random":
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    chunk = 1 if batch_invariant else max(len(seeds), 1)
    out = []
    for lo in range(0, len(seeds), chunk):
        gens = generators[lo:lo + chunk] if generators is not None else None
        img = G(z[lo:lo + chunk], truncation_psi=truncation_psi, noise_mode=noise_mode, noise_generators=gens)
        out.append(to_uint8(img))
    return np.concatenate(out) if out else np.zeros((0, G.img_channels, G.resolution, G.resolution), np.uint8)


def _save_grid(images: np.ndarray, path: Path) -> Path:
    """Rows = seeds, columns = channels, 2-pixel gaps; PNG, atomic."""
    from PIL import Image

    n, c, h, w = images.shape
    gap = 2
    canvas = np.full((n * (h + gap) - gap, c * (w + gap) - gap), 255, dtype=np.uint8)
    for i in range(n):
        for j in range(c):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = images[i, j]
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path


GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_CONFIG = "generator.json"


def export_generator(trainer: StyleGANTrainer, out_dir: Path, complete: bool) -> Path:
    """Write the EMA generator (safetensors) and its JSON config."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().float().cpu().contiguous() for k, v in trainer.G_ema.state_dict().items()}
    with atomic_path(out_dir / GENERATOR_WEIGHTS) as tmp:
        save_file(weights, str(tmp))
    write_json(out_dir / GENERATOR_CONFIG, {
        "generator": trainer.G_ema.kwargs,
        "step": trainer.step_count,
        "images_seen": trainer.step_count * trainer.cfg.batch_size,
        "complete": complete,
        "seed": trainer.seed,
        "training": dataclasses.asdict(trainer.cfg),
    })
    return out_dir / GENERATOR_WEIGHTS


def load_generator(results_dir: str | os.PathLike, device: str | torch.device | None = None) -> Generator:
    """The trained EMA generator from ``results_dir/stylegan/`` (no pickle)."""
    from safetensors.torch import load_file

    folder = Path(results_dir) / "stylegan"
    weights, config = folder / GENERATOR_WEIGHTS, folder / GENERATOR_CONFIG
    for path in (weights, config):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run notebook 02 (train StyleGAN) first")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = read_json(config)
    if not info.get("complete", True):
        warnings.warn(f"{config}: training stopped at {info['images_seen']} images, before its total_kimg; "
                      "this generator is unfinished (re-run notebook 02 to continue)", stacklevel=2)
    G = Generator(**info["generator"])
    G.load_state_dict(load_file(str(weights)))
    return G.to(device).eval().requires_grad_(False)


def sample(results_dir: str | os.PathLike, n_images: int, first_seed: int, batch_size: int,
           truncation_psi: float = 1.0, device: str | torch.device | None = None, progress: bool = True,
           noise_mode: str = "const", batch_invariant: bool = True) -> Path:
    """``n_images`` images from the EMA generator into ``samples/stylegan.npy``
    + ``stylegan_seeds.csv`` (uint8 N×C×H×W, resumable).

    Image i comes from seed ``first_seed + i`` alone: z is
    ``np.random.RandomState(seed).randn(z_dim)`` (as the authors' generate
    script), the noise inputs are the generator's constant buffers
    (``noise_mode='const'``, that script's default; ``'random'`` draws them
    per image from ``torch.Generator().manual_seed(seed)``), and with
    ``batch_invariant`` the image is bit-identical whatever ``batch_size``
    (see :func:`generate_images`)."""
    G = load_generator(results_dir, device)
    shape = (G.img_channels, G.resolution, G.resolution)
    return sample_to_npy(
        lambda seeds: generate_images(G, seeds, truncation_psi, noise_mode, batch_invariant),
        samples_path(results_dir, "stylegan"), n_images, first_seed, shape, batch_size,
        progress=progress, desc="stylegan",
    )


# ==========================================================================
# The training driver
# ==========================================================================

def _read_log(path: Path, upto_step: int) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        log = pd.read_csv(path, on_bad_lines="skip")
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None
    return log[log["step"] <= upto_step] if "step" in log else None


def train(results_dir: str | os.PathLike, config: TrainStyleGANSettings, seed: int = 0,
          device: str | torch.device | None = None, progress: bool = True,
          stop_after_steps: int | None = None, time_limit_min: float | None = None) -> dict:
    """Train (or resume) StyleGAN2-ADA on ``results_dir/data/train.npy``.

    Resumes from the newest checkpoint in ``stylegan/checkpoints`` when its
    settings match (``total_kimg`` may grow). Checkpoints (every
    ``checkpoint_kimg``, the last ``keep_checkpoints`` kept) hold G, D, G_ema, both
    optimizers, pl_mean, ADA's p and statistic, the step, RNG states and the
    loss statistics not yet logged; at each one a fixed-seed grid of G_ema
    is saved and the EMA generator exported. ``stop_after_steps`` /
    ``time_limit_min`` end this call early (with a checkpoint); a re-run
    continues exactly as if never stopped. Returns a summary dict.
    """
    out = Path(results_dir) / "stylegan"
    ckpt_dir, grid_dir, log_path = out / "checkpoints", out / "grids", out / "loss_log.csv"
    data = TrainingImages(results_dir, seed)
    out.mkdir(parents=True, exist_ok=True)
    trainer = StyleGANTrainer(config, data.shape, seed=seed, device=device)
    cfg = trainer.cfg
    pending: dict[str, list[torch.Tensor]] = {}

    if trainer.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    latest = checkpoints.load_latest_checkpoint(ckpt_dir, device="cpu")  # RNG states must stay on the CPU
    if latest is not None:
        trainer.load_state(latest[1], source=str(ckpt_dir))
        pending = {k: list(v.unbind()) for k, v in latest[1].get("log_pending", {}).items()}
    start = trainer.step_count
    # keep the log consistent with the checkpoint: rows after it are redone
    old_log = _read_log(log_path, start)
    if old_log is not None and len(old_log):
        with atomic_path(log_path) as tmp:
            old_log.to_csv(tmp, index=False)
    elif log_path.exists():
        log_path.unlink()

    total = cfg.total_steps
    grid_seeds = list(range(cfg.grid_seeds))
    deadline = time.monotonic() + 60 * time_limit_min if time_limit_min else None
    last_stop = total if stop_after_steps is None else min(total, start + int(stop_after_steps))
    interval_t0, interval_images = time.monotonic(), 0

    def write_log_row() -> None:
        nonlocal pending, interval_t0, interval_images
        elapsed = time.monotonic() - interval_t0
        row = {"step": trainer.step_count, "images_seen": trainer.step_count * cfg.batch_size,
               "kimg": trainer.step_count * cfg.batch_size / 1000, "augment_p": trainer.augment.p,
               "images_per_s": interval_images / elapsed if elapsed > 0 and interval_images else float("nan"),
               "time_s": trainer.time_s}
        for key in ("loss_G", "loss_D", "r1", "pl", "real_sign", "D_real", "D_fake"):
            row[key] = float(torch.stack(pending[key]).mean()) if pending.get(key) else float("nan")
        header = not log_path.exists()
        with open(log_path, "a") as handle:
            pd.DataFrame([row], columns=LOG_COLUMNS).to_csv(handle, header=header, index=False)
        pending, interval_t0, interval_images = {}, time.monotonic(), 0

    def checkpoint() -> None:
        state = trainer.state()
        state["log_pending"] = {k: torch.stack(v) for k, v in pending.items() if v}
        checkpoints.save_checkpoint(ckpt_dir, trainer.step_count, state, keep_last=cfg.keep_checkpoints)
        _save_grid(generate_images(trainer.G_ema, grid_seeds, batch_invariant=False), grid_dir / f"step_{trainer.step_count:09d}.png")
        export_generator(trainer, out, complete=trainer.step_count >= total)

    with progress_bar(total=total * cfg.batch_size, initial=start * cfg.batch_size, unit="img", desc="StyleGAN",
              disable=not progress, smoothing=0.1) as bar:
        while trainer.step_count < last_stop:
            t0 = time.monotonic()
            stats = trainer.step(data)
            trainer.time_s += time.monotonic() - t0
            interval_images += cfg.batch_size
            for key, value in stats.items():
                pending.setdefault(key, []).append(value)
            bar.update(cfg.batch_size)
            step = trainer.step_count
            at_checkpoint = step % cfg.checkpoint_every == 0 or step == total
            out_of_time = deadline is not None and time.monotonic() > deadline
            if step % cfg.log_every == 0 or at_checkpoint:
                bar.set_postfix(G=f"{float(stats['loss_G']):.3f}", D=f"{float(stats['loss_D']):.3f}",
                                p=f"{trainer.augment.p:.3f}")
                write_log_row()
            if at_checkpoint or out_of_time or step == last_stop:
                checkpoint()
            if out_of_time:
                break
    if trainer.step_count == start and not (out / GENERATOR_WEIGHTS).is_file():
        checkpoint()  # nothing left to train, but sampling needs the exported generator

    log = pd.read_csv(log_path) if log_path.is_file() else pd.DataFrame(columns=LOG_COLUMNS)
    last = log.iloc[-1].to_dict() if len(log) else {}
    return {
        "steps_done": trainer.step_count,
        "steps_total": total,
        "images_seen": trainer.step_count * cfg.batch_size,
        "complete": trainer.step_count >= total,
        "resumed_from_step": start,
        "train_time_s": round(trainer.time_s, 1),
        "augment_p": trainer.augment.p,
        "loss_G": last.get("loss_G"),
        "loss_D": last.get("loss_D"),
        "G_params": count_parameters(trainer.G),
        "D_params": count_parameters(trainer.D),
        "device": str(trainer.device),
    }
