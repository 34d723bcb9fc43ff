"""Images from a StyleGAN generator, one seed per image: training grids,
the exported EMA generator and ``samples/stylegan.npy``."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..common import atomic_path, read_json, write_json
from ..sampling import sample_to_npy, samples_path, to_uint8
from .networks import Generator

if TYPE_CHECKING:
    from .trainer import StyleGANTrainer

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


def save_grid(images: np.ndarray, path: Path) -> Path:
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


def export_is_current(out_dir: Path, step: int) -> bool:
    """Whether ``out_dir`` holds the exported generator of training step
    ``step``: its weights and a config that names that step (the two files
    are written one after the other, so a kill between them leaves weights
    of one step beside the config of an earlier one)."""
    config_path = out_dir / GENERATOR_CONFIG
    if not ((out_dir / GENERATOR_WEIGHTS).is_file() and config_path.is_file()):
        return False
    try:
        return int(read_json(config_path).get("step", -1)) == int(step)
    except ValueError:  # a torn config file
        return False


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



def checkpoint_steps(results_dir: str | os.PathLike) -> list[int]:
    """The steps of the kept training checkpoints (``stylegan/checkpoints``)."""
    from ..checkpoints import list_checkpoints

    return [step for step, _ in list_checkpoints(Path(results_dir) / "stylegan" / "checkpoints")]


def checkpoint_generator(results_dir: str | os.PathLike, step: int,
                         device: str | torch.device | None = None) -> Generator:
    """The EMA generator as it stood at training checkpoint ``step``, for the
    audits over training (memorization and fit against images seen). Its
    architecture is the exported generator's (``generator.json``)."""
    from ..checkpoints import checkpoint_path, load_state

    folder = Path(results_dir) / "stylegan"
    path = checkpoint_path(folder / "checkpoints", step)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no StyleGAN checkpoint at step {step} (kept: {checkpoint_steps(results_dir)})")
    if not (folder / GENERATOR_CONFIG).is_file():
        raise FileNotFoundError(f"{folder / GENERATOR_CONFIG}: missing; run notebook 02 (train StyleGAN) first")
    G = Generator(**read_json(folder / GENERATOR_CONFIG)["generator"])
    G.load_state_dict(load_state(path)["G_ema"])
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return G.to(device).eval().requires_grad_(False)


def checkpoint_images_seen(results_dir: str | os.PathLike, step: int) -> int:
    """Images shown to D by training checkpoint ``step``."""
    return int(step) * int(read_json(Path(results_dir) / "stylegan" / GENERATOR_CONFIG)["training"]["batch_size"])


def sample_checkpoint(results_dir: str | os.PathLike, step: int, n_images: int, first_seed: int, batch_size: int,
                      truncation_psi: float = 1.0, progress: bool = True) -> Path:
    """``n_images`` images of training checkpoint ``step`` (seeds as
    :func:`sample`) into ``samples/checkpoints/stylegan/step_*.npy``."""
    from ..checkpoints import checkpoint_path
    from ..sampling import checkpoint_samples_path, sample_checkpoint_to_npy

    G = checkpoint_generator(results_dir, step)
    source = checkpoint_path(Path(results_dir) / "stylegan" / "checkpoints", step)
    return sample_checkpoint_to_npy(
        lambda seeds: generate_images(G, seeds, truncation_psi), source, "G_ema",
        checkpoint_samples_path(results_dir, "stylegan", step), n_images, first_seed,
        (G.img_channels, G.resolution, G.resolution), batch_size, progress=progress, desc=f"stylegan step {step}")
