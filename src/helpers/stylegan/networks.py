"""The StyleGAN2 generator (mapping + synthesis, skip outputs) and the
residual discriminator with minibatch standard deviation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from ..config import TrainStyleGANSettings
from ..training import bf16_is_fast, count_parameters
from .layers import Conv2dLayer, FullyConnected, _fir_kernel, bias_act, modulated_conv2d, upsample2d

# ==========================================================================
# Generator
# ==========================================================================

def _unit_rms(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each latent divided by its root mean square: z then lies near a
    sphere whatever its dimension."""
    return z * (z.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z → w through ``num_layers`` leaky-ReLU layers (lr × ``lr_multiplier``).
    Why it tracks the average w: the truncation trick pulls w towards it."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        widths = [z_dim, *[w_dim] * num_layers]
        self.layers = nn.ModuleList(
            FullyConnected(fan_in, fan_out, activation="lrelu", lr_multiplier=lr_multiplier)
            for fan_in, fan_out in zip(widths, widths[1:])
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    @torch.no_grad()
    def _track(self, w: torch.Tensor) -> None:
        """Running mean of w over training batches (decay ``w_avg_beta``)."""
        self.w_avg.copy_(torch.lerp(w.mean(dim=0), self.w_avg, self.w_avg_beta))

    def truncate(self, ws: torch.Tensor, psi: float, cutoff: int | None = None) -> torch.Tensor:
        """Move the first ``cutoff`` ws (all by default) towards the average
        w: ψ = 1 leaves them, ψ = 0 gives the average image."""
        n = self.num_ws if cutoff is None else cutoff
        return torch.cat([torch.lerp(self.w_avg, ws[:, :n], psi), ws[:, n:]], dim=1)

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool = False) -> torch.Tensor:
        w = _unit_rms(z.float())
        for layer in self.layers:
            w = layer(w)
        if update_w_avg:
            self._track(w.detach())
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)  # one copy per synthesis layer (style mixing replaces some)
        return ws if truncation_psi == 1 else self.truncate(ws, truncation_psi, truncation_cutoff)


def _compute_dtype(use_bf16: bool, like: torch.Tensor) -> torch.dtype:
    """bfloat16 for a mixed-precision block on a GPU or on a CPU with bf16
    units (AMX or AVX-512 BF16: 3–5× float32 for these convolutions), else
    float32 (elsewhere CPU bfloat16 convolutions are slower)."""
    return torch.bfloat16 if (use_bf16 and bf16_is_fast(like.device)) else torch.float32


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
        self.channels_last = False   # set by use_channels_last: an execution choice, not architecture

    def forward(self, x, img, ws, noise_mode="random", noise_generators=None):
        dtype = _compute_dtype(self.use_bf16, ws)
        w_iter = iter(ws.unbind(dim=1))
        if self.conv0 is None:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x.to(dtype), next(w_iter), noise_mode, noise_generators)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv1(x, next(w_iter), noise_mode, noise_generators)
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter)).float()
        return x, (y if img is None else img + y)


def use_channels_last(network: nn.Module, flag: bool = True) -> nn.Module:
    """Run ``network``'s (G's or D's) blocks on channels-last (NHWC)
    activations: oneDNN's convolutions are faster on them (measured per
    StyleGAN step on one CPU core at 32²: 1.25× in float32, 1.28× in bf16;
    benchmarks/bench_stylegan.py). The same numbers up to rounding; not
    part of the architecture, so exported generators load without it."""
    for block in network.blocks:
        block.channels_last = bool(flag)
    return network


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
        batch, channels, height, width = x.shape
        group = min(self.group_size, batch)
        if batch % group:
            raise ValueError(f"minibatch-std: batch of {batch} is not a multiple of the group size {group}")
        parts = self.num_channels
        # image j of every group sits at [:, j]: statistics run over dim 0
        grouped = x.float().reshape(group, -1, parts, channels // parts, height, width)
        variance = (grouped - grouped.mean(dim=0)).square().mean(dim=0)
        spread = (variance + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [batch/group, parts]
        feature = spread.reshape(-1, parts, 1, 1).repeat(group, 1, height, width)
        return torch.cat([x, feature.to(x.dtype)], dim=1)


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
        self.channels_last = False   # set by use_channels_last: an execution choice, not architecture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(self.use_bf16, x)
        x = x.to(dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
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

