"""StyleGAN2's building blocks: equalized learning rate, FIR resampling
and weight (de)modulation.

Why plain convolutions: the reference uses custom CUDA kernels for the
filters; a (transposed/strided) depthwise convolution gives the same
result on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
    """FIR filter then keep every second pixel (anti-aliased ×½). On a CPU a
    bfloat16 input is filtered in float32: oneDNN's strided depthwise
    bfloat16 convolution is 7–8× slower there, backward included."""
    c = x.shape[1]
    work = x.float() if x.device.type == "cpu" else x
    out = F.conv2d(F.pad(work, [1, 1, 1, 1]), _depthwise(f, c, work.dtype), stride=2, groups=c)
    return out.to(x.dtype)


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
    """Equalized-lr linear layer. Why: weights are stored as N(0, 1)/lr_mul
    and rescaled on every call, so Adam moves every layer at the same
    relative speed whatever its fan-in (and ``lr_multiplier`` slows a whole
    layer down, as the mapping network wants)."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def scaled(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The run-time weight and bias: stored values times their gains."""
        return self.weight.to(dtype) * self.weight_gain, self.bias.to(dtype) * self.bias_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.scaled(x.dtype)
        if self.activation != "linear":
            return bias_act(x.matmul(weight.t()), bias, self.activation)
        return torch.addmm(bias.unsqueeze(0), x, weight.t())  # bias + x·Wᵀ in one kernel


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


def demodulation(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """1/σ per image and output channel, σ_o = sqrt(Σ_ik (w_oik s_i)² + ε):
    the norm each output channel would have if the weight were modulated
    per image. Computed in float32 whatever the block's precision."""
    # Σ_ik (w_oik s_i)² = Σ_i s_i² Σ_k w_oik²: one [B, I] × [I, O] product
    # instead of the [B, O, I, k, k] per-image weights
    energy = weight.float().square().sum(dim=[2, 3])  # [O, I]
    return (styles.float().square() @ energy.t() + 1e-8).rsqrt()


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, f: torch.Tensor,
                     noise: torch.Tensor | None = None, up: bool = False, demodulate: bool = True) -> torch.Tensor:
    """StyleGAN2's weight (de)modulation without per-image weights: scaling
    the input channels by the style, convolving with the shared weight and
    scaling the outputs by :func:`demodulation` equals convolving with each
    image's modulated, normalised weight. Why demodulate: activations keep
    unit variance for unit-variance inputs, with no AdaIN and so no
    droplet artifacts."""
    per_channel = lambda t: t.to(x.dtype).reshape(x.shape[0], -1, 1, 1)  # noqa: E731 - [B, C] → [B, C, 1, 1]
    inv_sigma = demodulation(weight, styles) if demodulate else None
    out = conv2d_resample(x * per_channel(styles.float()), weight.to(x.dtype), f, up=up)
    if inv_sigma is not None:
        out = out * per_channel(inv_sigma)
    return out if noise is None else out + noise.to(out.dtype)
