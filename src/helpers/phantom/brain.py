"""Brain phantom: BraTS-like subjects written as NIfTI in the BraTS 2020 or
2021 layout.

Volumes are built from the MNI152 template and its tissue maps shipped
inside nilearn's wheel (offline): each subject gets its own smooth random
deformation, intensity scaling, bias field, Rician noise and a tumour
(necrotic core inside an enhancing rim inside oedema) in one hemisphere.
Subject ``i`` depends only on ``(seed, layout, shape, i)``, so a cohort of 3
subjects is the first 3 subjects of a cohort of 24 with the same seed.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..common import progress as progress_bar
from .fields import _smooth_field

BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
BRATS_MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
BRATS_FILES: tuple[str, ...] = (*BRATS_MODALITIES, "seg")
#: BraTS labels: 1 necrotic core, 2 oedema, 4 enhancing tumour.
SEG_LABELS: tuple[int, ...] = (0, 1, 2, 4)
NECROTIC, OEDEMA, ENHANCING = 1, 2, 4
BRATS2020_FOLDER = "MICCAI_BraTS2020_TrainingData"
DEFAULT_BRATS_SUBJECTS = 24

# Relative intensity of each compartment per modality (BraTS-like contrasts:
# T1 WM > GM > CSF; T2 CSF bright; FLAIR CSF dark, oedema bright; T1ce the
# enhancing rim bright).      csf   gm    wm    oedema enhancing necrotic
_CONTRAST = {
    "t1":    np.array((0.26, 0.60, 0.86, 0.50, 0.58, 0.30)),
    "t1ce":  np.array((0.24, 0.58, 0.80, 0.48, 1.00, 0.28)),
    "t2":    np.array((1.00, 0.55, 0.38, 0.85, 0.62, 0.95)),
    "flair": np.array((0.14, 0.56, 0.46, 1.00, 0.74, 0.34)),
}
# Per-subject intensity scale range (the value of a "1.0" compartment).
_SCALE_RANGE = {"t1": (300, 1500), "t1ce": (400, 3000), "t2": (500, 4000), "flair": (300, 1600)}
_LAYOUT_CODE = {"2021": 2021, "2020": 2020}


def brats_subject_id(index: int, layout: str) -> str:
    """``BraTS2021_00000`` (2021, from 0) or ``BraTS20_Training_001`` (2020, from 1)."""
    if layout == "2021":
        return f"BraTS2021_{index:05d}"
    if layout == "2020":
        return f"BraTS20_Training_{index + 1:03d}"
    raise ValueError(f"layout must be '2021' or '2020', not {layout!r}")


def brats_affine(shape: tuple[int, int, int] = BRATS_SHAPE) -> np.ndarray:
    """The 1 mm voxel-to-world affine of BraTS files (LPS voxel order)."""
    return np.array(
        [[-1.0, 0, 0, 0], [0, -1.0, 0, shape[1] - 1.0], [0, 0, 1.0, 0], [0, 0, 0, 1]]
    )


@dataclass(frozen=True)
class _Template:
    tissues: Any            # torch (1, 3, X, Y, Z) float32: GM, WM, brain (soft)
    reach: np.ndarray       # flat bool: voxels at most 2 mm from the brain
    size: np.ndarray        # (X, Y, Z)
    centre: np.ndarray      # brain bounding-box centre, template voxels
    bbox: np.ndarray        # (2, 3) brain bounding box, template voxels
    seeds_by_side: tuple[np.ndarray, np.ndarray]  # tumour centres per hemisphere


@functools.lru_cache(maxsize=1)
def _template() -> _Template:
    """MNI152 GM/WM/brain maps in BraTS voxel order, once per process."""
    import torch
    from nilearn import datasets

    def load(fn) -> np.ndarray:
        data = np.asarray(fn(resolution=1).get_fdata(dtype=np.float32))
        return np.ascontiguousarray(data[::-1, ::-1, :])  # RAS → LPS voxel order, as BraTS

    gm = load(datasets.load_mni152_gm_template)
    wm = load(datasets.load_mni152_wm_template)
    t1 = load(datasets.load_mni152_template)
    # A soft brain mask (the template's own mask is t1 > 0.2, binary).
    brain = np.clip((t1 - 0.1) / 0.2, 0, 1).astype(np.float32)
    gm, wm = gm * brain, wm * brain
    hard = brain > 0.5
    reach = ndimage.binary_dilation(brain > 0, iterations=2)
    idx = np.argwhere(hard)
    bbox = np.stack([idx.min(0), idx.max(0)]).astype(np.float64)
    centre = bbox.mean(0)
    # Tumour centres: deep inside the cerebrum (≥ 18 mm from the surface),
    # in white matter, ≥ 12 mm off the midline, above the cerebellum.
    depth = ndimage.distance_transform_edt(hard[::2, ::2, ::2]) * 2
    cand = np.argwhere((depth >= 18) & (wm[::2, ::2, ::2] > 0.4)) * 2
    cand = cand[cand[:, 2] > 0.45 * gm.shape[2]]
    mid = (gm.shape[0] - 1) / 2
    sides = (cand[cand[:, 0] < mid - 12], cand[cand[:, 0] > mid + 12])
    tissues = torch.from_numpy(np.stack([gm, wm, brain])[None]).contiguous()
    return _Template(tissues, reach.ravel(), np.array(gm.shape), centre, bbox, sides)


def _sample(volume, points: np.ndarray) -> np.ndarray:
    """Trilinear values of ``volume`` (torch (1, C, X, Y, Z)) at voxel
    coordinates ``points`` (N, 3): (C, N). One multithreaded grid_sample."""
    import torch
    import torch.nn.functional as F

    size = np.asarray(volume.shape[2:], np.float32)
    norm = points.astype(np.float32) * (2.0 / (size - 1)) - 1.0
    grid = torch.from_numpy(np.ascontiguousarray(norm[:, ::-1]))[None, None, None]  # (z, y, x)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, :, 0, 0].numpy()


def _rotation(rng: np.random.Generator, max_deg=(4.0, 4.0, 7.0)) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(max_deg))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _tumour_labels(rng, box_shape, centre, radii, axes, brain_box, wm_box, scale):
    """Nested BraTS labels in a local box. Necrosis ⊂ eroded tumour core and
    core ⊂ eroded oedema by construction, so the regions nest exactly."""
    grids = np.ogrid[tuple(slice(0, s) for s in box_shape)]
    dist2 = sum(((g - c) / a) ** 2 for g, c, a in zip(grids, centre, axes))
    dist = np.sqrt(dist2).astype(np.float32)
    coarse = tuple(max(3, s // 12) for s in box_shape)
    lobes = _smooth_field(rng, box_shape, coarse, sigma=0.8)
    spread = _smooth_field(rng, box_shape, coarse, sigma=0.6)
    r_oed, r_core, r_nec = radii
    core_d = dist / (1 + 0.18 * lobes)
    oed_d = dist / np.clip(1 + 0.30 * spread + 0.5 * (wm_box - 0.5), 0.5, None)
    ball = ndimage.generate_binary_structure(3, 1)
    rim = max(1, round(2 * scale))
    core = (core_d < r_core) & brain_box
    necrotic = (core_d < r_nec) & ndimage.binary_erosion(core, ball, iterations=rim)
    whole = ((oed_d < r_oed) & brain_box) | ndimage.binary_dilation(core, ball, iterations=rim)
    parts, n_parts = ndimage.label(whole)
    if n_parts > 1 and core.any():            # oedema in one piece with the core
        whole = np.isin(parts, np.unique(parts[core]))
    labels = np.zeros(box_shape, np.int16)
    labels[whole] = OEDEMA
    labels[core] = ENHANCING
    labels[necrotic] = NECROTIC
    return labels, core


def _brats_subject(index: int, seed: int, layout: str, shape) -> dict[str, np.ndarray]:
    """One subject: ``{t1, t1ce, t2, flair, seg}`` int16 arrays of ``shape``.

    Output voxel p maps to template voxel q = centre + A (p - c + d(p) + m(p)),
    A a small random affine, d a smooth displacement, m the tumour's mass
    effect. Only voxels that can land in the brain are sampled and shaded
    (the background stays exactly 0, as in BraTS), which keeps this fast.
    """
    import torch

    tpl = _template()
    rng = np.random.default_rng(np.random.SeedSequence([seed, _LAYOUT_CODE[layout], index]))
    shape = np.asarray(shape)
    # -- geometry
    extent = tpl.bbox[1] - tpl.bbox[0] + 1
    base = 0.88 * min(1.0, float(np.min(shape / extent)))   # template → grid zoom
    zoom = base * rng.uniform(0.95, 1.05) * rng.uniform(0.97, 1.03, 3)
    a_mat = _rotation(rng) @ np.diag(1.0 / zoom)
    a_inv = np.linalg.inv(a_mat)
    centre_out = (shape - 1) / 2 + rng.uniform(-1, 1, 3) * np.array([5, 5, 3]) * base
    # The output region that can hold brain: the template's brain box mapped back.
    corners = np.array([[tpl.bbox[i, 0], tpl.bbox[j, 1], tpl.bbox[k, 2]]
                        for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    mapped = (corners - tpl.centre) @ a_inv.T + centre_out
    margin = 8 * base + 4
    lo = np.clip(np.floor(mapped.min(0) - margin), 0, shape).astype(int)
    hi = np.clip(np.ceil(mapped.max(0) + margin) + 1, 0, shape).astype(int)
    crop = tuple(int(h - a) for a, h in zip(lo, hi))
    disp = np.stack([_smooth_field(rng, crop, (5, 5, 4), sigma=0.7) for _ in range(3)])
    disp *= np.float32(2.5 * base)
    # -- tumour: centre in one hemisphere, sizes, mass effect (tissue pushed out).
    cands = tpl.seeds_by_side[int(rng.integers(2))]
    c_tpl = cands[rng.integers(len(cands))] + rng.uniform(-1, 1, 3)
    c_out = (c_tpl - tpl.centre) @ a_inv.T + centre_out         # grid voxels
    scale = float(np.mean(zoom))
    r_oed = rng.uniform(14, 32) * scale
    r_core = r_oed * rng.uniform(0.45, 0.7)
    r_nec = r_core * rng.uniform(0.45, 0.8)
    t_axes = rng.uniform(0.8, 1.2, 3)
    half = int(math.ceil(r_oed * 1.9 * t_axes.max())) + 3
    b_lo = np.clip(np.round(c_out).astype(int) - half, lo, hi)
    b_hi = np.clip(np.round(c_out).astype(int) + half + 1, lo, hi)
    box = tuple(slice(int(a - o), int(h - o)) for a, h, o in zip(b_lo, b_hi, lo))
    rel = np.meshgrid(*[np.arange(a, h, dtype=np.float32) - np.float32(c)
                        for a, h, c in zip(b_lo, b_hi, c_out)], indexing="ij")
    push = rng.uniform(0.25, 0.45) * np.exp(-sum(r * r for r in rel) / (2 * (1.3 * r_core) ** 2))
    for k in range(3):
        disp[k][box] -= rel[k] * push
    # -- template coordinates of every crop voxel; keep those that can be brain.
    u = [(np.arange(a, h, dtype=np.float32) - np.float32(c)).reshape([-1 if i == k else 1 for i in range(3)])
         for k, (a, h, c) in enumerate(zip(lo, hi, centre_out))]
    v = [u[j] + disp[j] for j in range(3)]
    del disp
    q = [sum(np.float32(a_mat[k, j]) * v[j] for j in range(3)) + np.float32(tpl.centre[k])
         for k in range(3)]
    del v
    size = tpl.size
    flat = np.zeros(crop, np.int32)          # nearest template voxel, flat index
    for k in range(3):
        flat *= int(size[k])
        flat += np.clip(q[k], 0, size[k] - 1).round().astype(np.int32)
    pts = np.flatnonzero(tpl.reach[flat])
    del flat
    gm, wm, brain = _sample(tpl.tissues, np.stack([qk.ravel()[pts] for qk in q], 1))
    keep = brain > 0.5
    pts, gm, wm, brain = pts[keep], gm[keep], wm[keep], brain[keep]
    csf = np.clip(brain - gm - wm, 0, 1)
    # -- tumour labels in the local box, kept deep inside the brain.
    brain_crop = np.zeros(crop, bool)
    brain_crop.flat[pts] = True
    wm_crop = np.zeros(crop, np.float32)
    wm_crop.flat[pts] = wm
    brain_box, wm_box = brain_crop[box], wm_crop[box]
    deep = ndimage.binary_erosion(brain_box, iterations=max(1, round(3 * scale)))
    local_c = c_out - b_lo
    for _ in range(8):
        labels, core = _tumour_labels(rng, brain_box.shape, local_c, (r_oed, r_core, r_nec),
                                      t_axes, brain_box, wm_box, scale)
        if core.any() and not (core & ~deep).any() and (labels == NECROTIC).any():
            break
        r_oed, r_core, r_nec = 0.85 * r_oed, 0.85 * r_core, 0.85 * r_nec
    # Per brain voxel: soft compartment weights (partial volume at borders)
    # and a little texture inside the tumour.
    ijk = np.unravel_index(pts, crop)
    inside = np.all([(c >= s.start) & (c < s.stop) for c, s in zip(ijk, box)], axis=0)
    local = tuple(c[inside] - s.start for c, s in zip(ijk, box))
    hetero = 1 + 0.08 * _smooth_field(rng, labels.shape, tuple(max(3, s // 6) for s in labels.shape))[local]
    weight = {lab: ndimage.gaussian_filter((labels == lab).astype(np.float32), 0.8)[local]
              for lab in (OEDEMA, ENHANCING, NECROTIC)}
    total = np.clip(sum(weight.values()), 0, 1)
    # Bias fields: one smooth multiplicative field per modality, from a
    # coarse 5×5×4 lattice spread over the crop.
    lattice = np.array([5, 5, 4])
    coarse = np.stack([_smooth_field(rng, lattice, lattice, sigma=0.6) for _ in BRATS_MODALITIES])
    at = np.stack(ijk, 1) * ((lattice - 1) / np.maximum(np.array(crop) - 1, 1))
    bias = np.exp(0.12 * _sample(torch.from_numpy(coarse)[None], at))
    full_index = np.ravel_multi_index(tuple(c + a for c, a in zip(ijk, lo)), tuple(shape))
    out = {}
    for m, name in enumerate(BRATS_MODALITIES):
        mu = (_CONTRAST[name] * rng.normal(1.0, 0.05, 6)).astype(np.float32)
        img = gm * mu[1] + wm * mu[2] + csf * mu[0]
        sub = img[inside]
        tumour = (weight[OEDEMA] * (0.45 * sub / brain[inside] + 0.55 * mu[3])
                  + weight[ENHANCING] * mu[4] + weight[NECROTIC] * mu[5])
        img[inside] = sub * (1 - total) + tumour * hetero * brain[inside]
        lo_s, hi_s = _SCALE_RANGE[name]
        scale_m = math.exp(rng.uniform(math.log(lo_s), math.log(hi_s)))
        img = img * bias[m] * np.float32(scale_m)
        sigma = np.float32(rng.uniform(0.015, 0.04) * scale_m)   # Rician noise
        n1 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
        n2 = rng.standard_normal(img.shape, dtype=np.float32) * sigma
        img = np.sqrt((img + n1) ** 2 + n2**2)
        vol = np.zeros(tuple(shape), np.int16)
        vol.flat[full_index] = np.clip(np.rint(img), 1, 32767)
        out[name] = vol
    seg = np.zeros(tuple(shape), np.int16)
    seg[tuple(slice(a, h) for a, h in zip(b_lo, b_hi))] = labels
    out["seg"] = seg
    return out


def _write_nifti(array: np.ndarray, path: Path, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)      # .nii.gz: nibabel's default gzip level 1 (fast)


def make_brats_cohort(
    out_dir: str | os.PathLike,
    n_subjects: int = DEFAULT_BRATS_SUBJECTS,
    seed: int = 0,
    layout: str = "2021",
    shape: tuple[int, int, int] = BRATS_SHAPE,
    progress: bool = True,
) -> Path:
    """Write a BraTS-like cohort and return the folder that holds the subject
    folders (what a user passes as ``--data``).

    - layout ``"2021"``: ``out_dir/BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``
      (numbering from 00000); returns ``out_dir``.
    - layout ``"2020"``: ``out_dir/MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/
      BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii`` (uncompressed, numbering
      from 001); returns ``out_dir/MICCAI_BraTS2020_TrainingData``.

    Volumes are int16 of ``shape`` (default 240×240×155, axial = last axis)
    with BraTS's 1 mm affine; seg holds labels {0, 1, 2, 4}. A smaller
    ``shape`` gives a miniature brain (for fast tests), not a crop.
    """
    if layout not in _LAYOUT_CODE:
        raise ValueError(f"layout must be '2021' or '2020', not {layout!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes ≥ 16, not {shape}")
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be ≥ 1, not {n_subjects}")
    out_dir = Path(out_dir)
    root = out_dir / BRATS2020_FOLDER if layout == "2020" else out_dir
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".nii" if layout == "2020" else ".nii.gz"
    affine = brats_affine(shape)
    # One torch thread computes while one writer thread compresses (gzip
    # releases the GIL): on 2 cores this beats two torch threads, which
    # also degrade badly when the machine is shared.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pending: list[Future] = []
    try:
        with ThreadPoolExecutor(max_workers=1) as writer:
            for i in progress_bar(range(n_subjects), desc=f"phantom BraTS{layout}", unit="subject",
                          disable=not progress):
                subject = brats_subject_id(i, layout)
                folder = root / subject
                folder.mkdir(exist_ok=True)
                volumes = _brats_subject(i, seed, layout, shape)
                while len(pending) > len(BRATS_FILES):        # at most 2 subjects in memory
                    pending.pop(0).result()
                pending += [writer.submit(_write_nifti, volumes[name],
                                          folder / f"{subject}_{name}{suffix}", affine)
                            for name in BRATS_FILES]
            for job in pending:
                job.result()
    finally:
        torch.set_num_threads(threads)
    return root
