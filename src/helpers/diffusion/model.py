"""The network and the noise process: a diffusers ``UNet2DModel`` laid
out like guided-diffusion's UNet and a ``DDPMScheduler`` with its scaled
linear β schedule."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import TrainDiffusionSettings


def attention_levels(image_size: int, n_levels: int, resolutions: Sequence[int]) -> list[int]:
    """Level indices whose feature maps have one of ``resolutions`` (level i
    works at ``image_size / 2**i``), as guided-diffusion's
    ``attention_resolutions``."""
    sizes = [image_size // 2**i for i in range(n_levels)]
    levels = []
    for res in resolutions:
        if int(res) not in sizes:
            raise ValueError(
                f"attention resolution {res} is not a feature-map size of this UNet "
                f"(image {image_size}, {n_levels} levels: {sizes})"
            )
        levels.append(sizes.index(int(res)))
    return sorted(set(levels))


def guided_diffusion_betas(num_train_timesteps: int) -> tuple[float, float]:
    """guided-diffusion's linear schedule endpoints: 1e-4 and 0.02 scaled by
    1000/T, so that any T gives the same overall amount of noise."""
    scale = 1000.0 / num_train_timesteps
    return scale * 1e-4, scale * 0.02


# --------------------------------------------------------------------------
# Model and noise schedule
# --------------------------------------------------------------------------

def build_unet(settings: TrainDiffusionSettings, channels: int, image_size: int):
    """A ``UNet2DModel`` predicting ε (or v) for ``channels``-channel square images."""
    from diffusers import UNet2DModel

    widths = tuple(int(w) for w in settings.block_out_channels)
    if image_size % 2 ** (len(widths) - 1):
        raise ValueError(f"image_size {image_size} is not divisible by 2**{len(widths) - 1} ({len(widths)} UNet levels)")
    attn = attention_levels(image_size, len(widths), settings.attention_resolutions)
    bad = [widths[i] for i in attn if widths[i] % settings.attention_head_dim]
    if bad:
        raise ValueError(f"attention_head_dim={settings.attention_head_dim} must divide widths {bad}")
    down = tuple("AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(widths)))
    up = tuple("AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(widths))))
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths,
        layers_per_block=int(settings.layers_per_block),
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=int(settings.attention_head_dim),
        norm_num_groups=int(settings.norm_num_groups),
        resnet_time_scale_shift="scale_shift" if settings.scale_shift_norm else "default",
        dropout=float(settings.dropout),
        flip_sin_to_cos=True,   # guided-diffusion's [cos, sin] timestep embedding
        freq_shift=0,
    )
    if settings.zero_init:
        zero_init_residual_outputs(unet)
    return unet


@torch.no_grad()
def zero_init_residual_outputs(unet) -> None:
    """Zero the layers guided-diffusion zero-initialises: the second conv of
    every res-block, every attention output projection and the output conv,
    so each residual branch starts as the identity."""
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            torch.nn.init.zeros_(module.conv2.weight)
            torch.nn.init.zeros_(module.conv2.bias)
        elif isinstance(module, Attention):
            torch.nn.init.zeros_(module.to_out[0].weight)
            torch.nn.init.zeros_(module.to_out[0].bias)
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)


def build_noise_scheduler(settings: TrainDiffusionSettings):
    """The DDPM forward process and ancestral sampler (clipping x̂₀ to
    [-1, 1] as guided-diffusion's ``clip_denoised``)."""
    from diffusers import DDPMScheduler

    start, end = guided_diffusion_betas(settings.num_train_timesteps)
    return DDPMScheduler(
        num_train_timesteps=int(settings.num_train_timesteps),
        beta_schedule=settings.beta_schedule,
        beta_start=float(settings.beta_start if settings.beta_start is not None else start),
        beta_end=float(settings.beta_end if settings.beta_end is not None else end),
        variance_type=settings.variance_type,
        prediction_type=settings.prediction_type,
        clip_sample=True,
        clip_sample_range=1.0,
    )

