"""The pixel-space diffusion model of the study: an unconditional DDPM built
from HuggingFace diffusers parts, trained with HF accelerate, sampled one
seed per image.

Why these parts: the authors trained OpenAI's guided-diffusion UNet; diffusers'
``UNet2DModel`` with scale-shift normalisation, attention at chosen feature-map
sizes and conv down/up-sampling is the same network (see ``DIFFERENCES``), and
``DDPMScheduler`` with guided-diffusion's scaled linear β schedule and
``variance_type="fixed_large"`` is the same forward process and ancestral
sampler. accelerate lets one loop run on CPU, one GPU (bf16 autocast) or
several (``accelerate launch``).

Training is resumable *exactly*: the images of step ``s`` and its noise and
timesteps are drawn from generators seeded with ``(seed, s, process)``, and a
checkpoint holds model, EMA, optimizer, LR schedule, step and RNG states, so a
run killed after k steps and re-run ends with the same weights as one that
never stopped (on CPU, bit for bit).

Results (``results_dir/diffusion/``): ``checkpoints/step_*.safetensors``,
``loss_log.csv`` (step, images_seen, epoch, loss, lr, grad_norm, seconds, threads),
``pipeline/`` (``DDPMPipeline.save_pretrained`` with the EMA weights,
safetensors; loads offline), ``summary.json`` and the notebook's
``params.yaml``. Sampling writes ``samples/diffusion.npy`` (+ seeds) through
:func:`helpers.sampling.sample_to_npy`.

Modules: ``model`` (UNet and noise scheduler), ``trainer`` (set-up and one
step), ``loop`` (:func:`train`), ``sampling`` (per-seed images),
``notes`` (differences from the authors, profile rationale), ``cli``
(``python -m helpers.diffusion``). The training images, step seeds and
loss log are shared with StyleGAN (:mod:`helpers.training`).
"""

from ..training import TrainingImages, count_parameters, step_seed
from .cli import main
from .loop import LOG_COLUMNS, MODEL_NAME, output_dir, pipeline_dir, read_loss_log, save_pipeline, train
from .model import (
                    attention_levels,
                    build_noise_scheduler,
                    build_unet,
                    guided_diffusion_betas,
                    zero_init_residual_outputs,
)
from .notes import DIFFERENCES, PROFILE_NOTES
from .sampling import (
                    checkpoint_pipeline,
                    checkpoint_steps,
                    load_pipeline,
                    make_generate,
                    preview,
                    sample,
                    sample_images,
                    sampling_scheduler,
                    seeded_generator,
)
from .trainer import TrainingSetup, make_accelerator, resolve_speed_options, setup_training, train_step

__all__ = [
    "DIFFERENCES", "LOG_COLUMNS", "MODEL_NAME", "PROFILE_NOTES", "TrainingImages", "TrainingSetup",
    "attention_levels", "build_noise_scheduler", "checkpoint_pipeline", "checkpoint_steps",
    "build_unet", "count_parameters", "guided_diffusion_betas",
    "load_pipeline", "main", "make_accelerator", "make_generate", "output_dir", "pipeline_dir", "preview",
    "read_loss_log", "resolve_speed_options", "sample", "sample_images", "sampling_scheduler", "save_pipeline",
    "seeded_generator", "setup_training", "step_seed", "train", "train_step", "zero_init_residual_outputs",
]
