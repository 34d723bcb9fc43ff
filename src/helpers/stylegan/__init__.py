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
mixing; an EMA generator; ADA (:mod:`helpers.stylegan.augment`).

Faithful to the reference, with these differences (all documented where
they live): resampling filters are applied with plain (transposed/strided)
convolutions instead of custom CUDA kernels; mixed precision uses bfloat16
(no loss scaling needed) in the top ``num_fp16_res`` resolutions, on a
GPU and on CPUs with bf16 units (:func:`helpers.training.bf16_is_fast`);
ADA's
``p`` is clamped to [0, 1]; every random draw of a training step comes from
generators seeded by ``(seed, step)``, so a resumed run continues
bit-for-bit on CPU (the reference restarts ``p`` and the counters);
training runs on one device. ``accelerate`` is not used: with two
optimizers, lazily interleaved regularization phases, ``autograd.grad``
penalties, bfloat16 by block and our own checkpoint state, plain torch on
one device is the simpler code.

Modules: ``layers`` (equalized lr, FIR resampling, modulated conv),
``networks`` (G, D), ``augment`` (ADA), ``trainer`` (one training step),
``loop`` (:func:`train`), ``sampling`` (per-seed images, export, load).
The training images, step seeds and loss log are shared with the
diffusion model (:mod:`helpers.training`).

Results under ``results_dir/stylegan/`` (see :func:`train`):
``checkpoints/step_*.safetensors``, ``loss_log.csv``, ``grids/step_*.png``,
``generator.safetensors`` + ``generator.json`` (the EMA generator, no
pickle), ``params.yaml`` (written by the notebook).
"""

from ..training import TrainingImages, count_parameters
from .augment import AdaptiveAugment
from .layers import Conv2dLayer, FullyConnected, conv2d_resample, downsample2d, modulated_conv2d, upsample2d
from .loop import LOG_COLUMNS, train
from .networks import Discriminator, Generator, MappingNetwork, MinibatchStd, channels_per_resolution, model_summary
from .sampling import (
                       GENERATOR_CONFIG,
                       GENERATOR_WEIGHTS,
                       checkpoint_generator,
                       checkpoint_images_seen,
                       checkpoint_steps,
                       export_generator,
                       generate_images,
                       latents_for_seeds,
                       load_generator,
                       sample,
                       sample_checkpoint,
)
from .trainer import StyleGANTrainer

__all__ = [
    "AdaptiveAugment", "Conv2dLayer", "Discriminator", "FullyConnected", "GENERATOR_CONFIG", "GENERATOR_WEIGHTS",
    "Generator", "LOG_COLUMNS", "MappingNetwork", "MinibatchStd", "StyleGANTrainer", "TrainingImages",
    "channels_per_resolution", "checkpoint_generator", "checkpoint_images_seen", "checkpoint_steps",
    "conv2d_resample", "count_parameters", "downsample2d", "export_generator",
    "generate_images", "latents_for_seeds", "load_generator", "model_summary", "modulated_conv2d", "sample",
    "sample_checkpoint", "train", "upsample2d",
]
