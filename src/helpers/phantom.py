"""The embedded phantom cohort: deterministic look-alike RAW data in the exact
on-disk formats of BraTS (2020 and 2021 layouts) and of the Kermany chest
x-ray set.

Why: the real sets need a registration and cannot be downloaded by the
program, yet every step (and every test) must run end to end. The phantom
writes files that the data loaders read exactly like real data, so the
loaders are exercised for real, not mocked.

Brain volumes are built from the MNI152 template and its tissue maps shipped
inside nilearn's wheel (offline): each subject gets its own smooth random
deformation, intensity scaling, bias field, Rician noise and a tumour
(necrotic core inside an enhancing rim inside oedema) in one hemisphere.
Chest x-rays are drawn procedurally (lungs, ribs, heart, clavicles,
diaphragm, spine, soft tissue; patchy opacities for pneumonia).

Subject ``i`` depends only on ``(seed, layout, shape, i)`` and image ``k`` of
the chest set on ``(seed, k)`` and the patient list: a brain cohort of 3
subjects is the first 3 subjects of a cohort of 24 with the same seed.

``ensure_phantom`` caches a cohort under ``data/phantom/<kind>-<hash>/`` and
regenerates it only when its parameters (or ``PHANTOM_VERSION``) change.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from helpers import common
from helpers.common import progress as progress_bar

if TYPE_CHECKING:
    from PIL import Image

#: Bump when the generator's output changes: cached cohorts are regenerated.
PHANTOM_VERSION = 1

KINDS: tuple[str, ...] = ("brats2021", "brats2020", "cxr")
MARKER = "phantom.json"

# --------------------------------------------------------------------------
# Brain (BraTS layouts)
# --------------------------------------------------------------------------

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


def _smooth_field(rng: np.random.Generator, shape, coarse, sigma=1.0) -> np.ndarray:
    """A smooth random field of unit-ish amplitude: coarse Gaussian noise,
    blurred, then trilinearly upsampled to ``shape`` (cheap at any size)."""
    import torch
    import torch.nn.functional as F

    noise = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma, mode="wrap")
    noise /= noise.std() + 1e-8
    coarse_t = torch.from_numpy(noise.astype(np.float32))[None, None]
    out = F.interpolate(coarse_t, size=tuple(int(s) for s in shape), mode="trilinear",
                        align_corners=True)
    return out[0, 0].numpy()


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
    crop = tuple(int(h - l) for l, h in zip(lo, hi))
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
    box = tuple(slice(int(l - o), int(h - o)) for l, h, o in zip(b_lo, b_hi, lo))
    rel = np.meshgrid(*[np.arange(l, h, dtype=np.float32) - np.float32(c)
                        for l, h, c in zip(b_lo, b_hi, c_out)], indexing="ij")
    push = rng.uniform(0.25, 0.45) * np.exp(-sum(r * r for r in rel) / (2 * (1.3 * r_core) ** 2))
    for k in range(3):
        disp[k][box] -= rel[k] * push
    # -- template coordinates of every crop voxel; keep those that can be brain.
    u = [(np.arange(l, h, dtype=np.float32) - np.float32(c)).reshape([-1 if i == k else 1 for i in range(3)])
         for k, (l, h, c) in enumerate(zip(lo, hi, centre_out))]
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
    full_index = np.ravel_multi_index(tuple(c + l for c, l in zip(ijk, lo)), tuple(shape))
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
    seg[tuple(slice(l, h) for l, h in zip(b_lo, b_hi))] = labels
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


# --------------------------------------------------------------------------
# Chest x-ray (Kermany layout)
# --------------------------------------------------------------------------

CXR_FOLDER = "chest_xray"
CXR_CLASSES: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
DEFAULT_CXR_NORMAL = 100
DEFAULT_CXR_PNEUMONIA = 200
_CXR_PATIENT = re.compile(
    r"^(?:(?P<normal>(?:NORMAL2-)?IM-\d{4})-\d{4}|(?P<pneumonia>person\d+)_(?:bacteria|virus)_\d+)$"
)


def cxr_patient_id(filename: str | os.PathLike) -> str:
    """The patient of a Kermany-style file name: ``IM-0115-0001.jpeg`` →
    ``IM-0115``; ``NORMAL2-IM-1427-0001.jpeg`` → ``NORMAL2-IM-1427``;
    ``person1_bacteria_1.jpeg`` → ``person1``."""
    stem = Path(filename).name.rsplit(".", 1)[0]
    match = _CXR_PATIENT.match(stem)
    if match is None:
        raise ValueError(
            f"{filename}: not a Kermany chest x-ray name (expected IM-0115-0001.jpeg, "
            "NORMAL2-IM-1427-0001.jpeg, person1_bacteria_1.jpeg or person1_virus_6.jpeg)"
        )
    return match["normal"] or match["pneumonia"]


@dataclass(frozen=True)
class _CxrImage:
    cls: str          # NORMAL | PNEUMONIA
    patient: str
    name: str         # file name
    finding: str      # normal | bacteria | virus


def _cxr_patients(rng: np.random.Generator, cls: str, n_images: int) -> list[list[_CxrImage]]:
    """Patients (each a list of its images) with ``n_images`` images in all,
    named as in the Kermany set; some patients have several images."""
    patients: list[list[_CxrImage]] = []
    total = 0
    numbers = rng.permutation(np.arange(1, 10000))
    counters = {"bacteria": int(rng.integers(1, 50)), "virus": int(rng.integers(1, 50))}
    for number in numbers:
        if total >= n_images:
            break
        if cls == "NORMAL":
            count = int(rng.choice([1, 2, 3], p=[0.75, 0.2, 0.05]))
            patient = f"{'NORMAL2-' if rng.random() < 0.35 else ''}IM-{number:04d}"
            names = [f"{patient}-{k + 1:04d}.jpeg" for k in range(count)]
            finding = ["normal"] * count
        else:
            count = int(rng.choice([1, 2, 3, 4], p=[0.55, 0.25, 0.12, 0.08]))
            kind = "bacteria" if rng.random() < 0.65 else "virus"
            patient = f"person{number}"
            names = []
            for _ in range(count):
                names.append(f"{patient}_{kind}_{counters[kind]}.jpeg")
                counters[kind] += int(rng.integers(1, 4))
            finding = [kind] * count
        count = min(count, n_images - total)
        patients.append([_CxrImage(cls, patient, n, f) for n, f in zip(names[:count], finding)])
        total += count
    return patients


def _assign_splits(rng, patients, fractions) -> list[list[list[_CxrImage]]]:
    """Whole patients to splits, each split as near its share of images as
    patient boundaries allow (every split gets a patient when possible)."""
    n_images = sum(len(p) for p in patients)
    targets = np.asarray(fractions, float) * n_images
    splits: list[list] = [[] for _ in fractions]
    counts = np.zeros(len(fractions))
    order = rng.permutation(len(patients))
    for rank, i in enumerate(order):
        empty = [s for s in range(len(splits)) if not splits[s]]
        left = len(order) - rank
        if empty and left <= len(empty):     # make sure no split stays empty
            s = empty[0]
        else:
            s = int(np.argmax(targets - counts))
        splits[s].append(patients[i])
        counts[s] += len(patients[i])
    return splits


def _curve(points, n=40, closed=True) -> np.ndarray:
    """A smooth curve through ``points`` (a periodic spline when ``closed``)."""
    from scipy.interpolate import splev, splprep

    pts = np.asarray(points, float)
    tck, _ = splprep([pts[:, 0], pts[:, 1]], s=0, per=closed)
    x, y = splev(np.linspace(0, 1, n * len(pts), endpoint=not closed), tck)
    return np.stack([x, y], 1)


def _mask(shape, draw) -> np.ndarray:
    """Rasterise with PIL: ``draw(ImageDraw)`` on a blank canvas → float mask."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw(ImageDraw.Draw(canvas))
    return np.asarray(canvas, np.float32) / 255.0


def _smooth2d(rng: np.random.Generator, shape, coarse, sigma=0.7) -> np.ndarray:
    """A smooth random 2-D field of unit-ish amplitude (see ``_smooth_field``)."""
    return _smooth_field(rng, (*shape, 1), (*coarse, 1), sigma)[..., 0]


def _chest_density(rng: np.random.Generator, h: int, w: int, finding: str) -> np.ndarray:
    """Projected density (bright = dense) of a PA chest film on an h×w canvas.

    Coordinates are fractions of the width (x) and height (y); the patient's
    right lung is on the image's left, the heart bulges into the left lung.
    """
    from skimage.draw import ellipse

    def px(points):  # normalised (x, y) → pixel tuples for PIL
        return [(float(x * w), float(y * h)) for x, y in points]

    def fill(points, value=255):
        return _mask((h, w), lambda d: d.polygon(px(points), fill=value))

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xn, yn = xx / w, yy / h
    cx = rng.uniform(0.46, 0.54)
    hw = rng.uniform(0.33, 0.43)                 # half-width of the torso
    top = rng.uniform(-0.05, 0.07)               # vertical framing
    lw = hw * rng.uniform(0.76, 0.86)            # half-width of the lung fields
    lb = top + rng.uniform(0.66, 0.76)           # level of the diaphragm

    def jit(s=0.008):                            # shape jitter
        return rng.normal(0, s)

    # Soft tissue: shoulders, neck, flanks; thicker in the middle.
    shoulder = top + rng.uniform(0.1, 0.16)
    # Half-width of the silhouette per row: neck, rounded shoulders, flanks.
    neck = rng.uniform(0.06, 0.09)
    y0, y1 = top + 0.02, shoulder + rng.uniform(0.1, 0.2)
    frac = np.clip((yn[:, :1] - y0) / (y1 - y0), 0, 1)
    half = neck + (hw - neck) * (1 - (1 - frac) ** 2.5) ** 0.7 + 0.03 * (yn[:, :1] - y1).clip(0)
    body = ndimage.gaussian_filter((np.abs(xn - cx) < half).astype(np.float32), 0.004 * w)
    if rng.random() < 0.5:                       # arms beside the chest
        for sgn in (-1, 1):
            x0 = cx + sgn * (hw * 1.05 + rng.uniform(0.04, 0.1))
            body = np.maximum(body, 0.85 * fill([(x0 - 0.05, shoulder + 0.12), (x0 + 0.05, shoulder + 0.1),
                                                (x0 + 0.06, 1.3), (x0 - 0.06, 1.3)]))
    body = ndimage.gaussian_filter(body, 0.008 * w)
    thick = np.clip(1 - (np.abs(xn - cx) / (hw * 1.1)) ** 2.5, 0, 1) ** 0.7
    density = body * (0.22 + 0.34 * thick)

    # Lungs, heart, aortic knob.
    lungs = np.zeros((h, w), np.float32)
    for sgn in (-1, 1):
        low = lb + (0.02 if sgn > 0 else 0.0)   # the right hemidiaphragm sits higher
        med = 0.045
        pts = [(cx + sgn * 0.1, top + 0.1), (cx + sgn * lw * 0.55, top + 0.13),
               (cx + sgn * lw * 0.86, top + 0.28), (cx + sgn * lw * 0.97, top + 0.48),
               (cx + sgn * lw * 1.0, low + 0.02), (cx + sgn * lw * 0.8, low - 0.06),
               (cx + sgn * lw * 0.45, low - 0.09), (cx + sgn * med, low - 0.04),
               (cx + sgn * med, top + 0.4), (cx + sgn * 0.06, top + 0.2)]
        outline = _curve([(x + jit(), y + jit()) for x, y in pts], 20)
        lungs = np.maximum(lungs, fill(outline))
    lungs = ndimage.gaussian_filter(lungs, 0.004 * w) * np.clip(body * 1.3 - 0.3, 0, 1)
    heart = np.zeros((h, w), np.float32)
    rr, cc = ellipse((lb - rng.uniform(0.11, 0.15)) * h, (cx + rng.uniform(0.03, 0.07)) * w,
                     rng.uniform(0.1, 0.14) * h, rng.uniform(0.13, 0.17) * w, (h, w),
                     rotation=rng.uniform(-0.5, -0.2))
    heart[rr, cc] = 1
    rr, cc = ellipse((top + 0.31) * h, (cx + 0.05) * w, 0.03 * h, 0.03 * w, (h, w))  # aortic knob
    heart[rr, cc] = 1
    heart = ndimage.gaussian_filter(heart, 0.006 * w)
    air = lungs * (1 - heart)

    # Lung markings: curvy vessel-like ridges, densest at the hila.
    hila = sum(np.exp(-(((xn - cx - s * 0.1) / 0.07) ** 2 + ((yn - top - 0.4) / 0.08) ** 2))
               for s in (-1, 1))
    near = np.exp(-(((xn - cx) / (lw * 0.9)) ** 2)) * (0.4 + 0.6 * (yn > top + 0.3))
    ridges = np.exp(-(_smooth2d(rng, (h, w), (max(4, h // 14), max(4, w // 14))) / 0.18) ** 2)
    markings = air * (0.05 * ridges * near + 0.08 * hila)

    opacity = np.zeros((h, w), np.float32)
    if finding != "normal":
        patches = _smooth2d(rng, (h, w), (max(4, h // 10), max(4, w // 10)), 0.6)
        if finding == "bacteria":            # one or two dense lobar consolidations
            for _ in range(int(rng.integers(1, 3))):
                sx = cx + rng.choice([-1, 1]) * lw * rng.uniform(0.35, 0.7)
                sy = top + rng.uniform(0.3, 0.62)
                env = np.exp(-(((xn - sx) / rng.uniform(0.07, 0.13)) ** 2
                               + ((yn - sy) / rng.uniform(0.08, 0.16)) ** 2))
                opacity += rng.uniform(0.16, 0.26) * np.clip(env * (1.3 + 0.6 * patches), 0, 1)
        else:                                 # diffuse, bilateral, perihilar and basal haze
            env = np.clip(0.7 * hila + 0.5 * np.clip((yn - top - 0.35) / 0.3, 0, 1), 0, 1)
            opacity += rng.uniform(0.09, 0.16) * env * np.clip(0.5 + 0.7 * patches, 0, 1)
        opacity = np.clip(opacity, 0, 0.28) * air      # consolidates air spaces only
    density = density - 0.27 * air + markings + opacity
    if rng.random() < 0.6:                    # gastric bubble under the left diaphragm
        bubble = np.zeros((h, w), np.float32)
        rr, cc = ellipse((lb + 0.06) * h, (cx + lw * 0.5) * w, 0.025 * h, 0.05 * w, (h, w))
        bubble[rr, cc] = 1
        density -= 0.08 * ndimage.gaussian_filter(bubble, 0.006 * w) * body

    # Bones: posterior ribs (bright cortex), faint anterior ribs, clavicles, spine.
    def bone(d, points, width, value):
        width = max(2, round(width * h))
        d.line(px(points), fill=value, width=width, joint="curve")
        d.line(px(points), fill=int(value * 0.55), width=max(1, width - 2), joint="curve")

    def skeleton(d):
        t = np.linspace(0, 1, 24)
        for sgn in (-1, 1):
            step = rng.uniform(0.05, 0.06)
            for k in range(10):
                y0 = top + 0.12 + k * step + jit(0.004)
                post = [(cx + sgn * (0.025 + (lw * 1.02) * ti),
                         y0 - 0.05 * np.sin(np.pi * ti * 0.9) + 0.12 * ti**3) for ti in t]
                bone(d, post, 0.02, 255)
                ant = [(cx + sgn * (lw * 0.98 - lw * 0.6 * ti), y0 + 0.08 + 0.1 * ti - 0.03 * ti**2)
                       for ti in t[: 16]]
                d.line(px(ant), fill=70, width=max(2, round(0.016 * h)), joint="curve")
            clav = [(cx + sgn * (0.03 + 0.26 * ti), top + 0.15 - 0.05 * ti + 0.02 * np.sin(np.pi * ti))
                    for ti in np.linspace(0, 1, 16)]
            bone(d, clav, 0.026, 255)
            d.line(px([(cx + sgn * hw * 0.95, shoulder + 0.05), (cx + sgn * lw * 0.7, top + 0.3),
                       (cx + sgn * hw * 0.98, top + 0.45)]), fill=60, width=max(2, round(0.01 * h)))

    ribs = ndimage.gaussian_filter(_mask((h, w), skeleton), 0.0025 * w)
    spine = np.clip(1 - np.abs(xn - cx) / 0.035, 0, 1) ** 0.5 * (yn > top)
    vertebrae = 0.6 + 0.4 * (np.cos(2 * np.pi * (yn - top) / 0.05) > -0.5)
    bones = 0.065 * ribs * body + 0.04 * spine * vertebrae * body
    return (density + bones).astype(np.float32)


def _cxr_image(rng: np.random.Generator, finding: str, width_range) -> "Image.Image":
    """One procedurally drawn chest film as an 8-bit PIL image of random size
    (drawn at 256 px wide, then resized, then film grain added)."""
    from PIL import Image

    width = int(rng.integers(width_range[0], width_range[1] + 1))
    height = int(round(width * rng.uniform(0.7, 1.1)))
    w0 = 256
    h0 = max(32, round(w0 * height / width))
    density = _chest_density(rng, h0, w0, finding)
    # Film response: contrast, brightness and gamma vary between machines.
    lo, hi = np.percentile(density, [1, 99.7])
    film = np.clip((density - lo) / (hi - lo + 1e-6), 0, 1) ** rng.uniform(0.8, 1.25)
    film = rng.uniform(0.0, 0.05) + rng.uniform(0.82, 0.95) * film
    small = Image.fromarray(np.clip(film * 255, 0, 255).astype(np.uint8), "L")
    big = np.asarray(small.resize((width, height), Image.BICUBIC), np.int16)
    grain = rng.integers(-3, 4, size=(height, width), dtype=np.int16)
    grain += rng.integers(-3, 4, size=(height, width), dtype=np.int16)   # triangular
    return Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8), "L")


def make_cxr_cohort(
    out_dir: str | os.PathLike,
    n_normal: int = DEFAULT_CXR_NORMAL,
    n_pneumonia: int = DEFAULT_CXR_PNEUMONIA,
    seed: int = 0,
    splits: tuple[str, ...] = ("train", "test"),
    split_fractions: tuple[float, ...] | None = None,
    width_range: tuple[int, int] = (800, 1600),
    rgb_fraction: float = 0.05,
    progress: bool = True,
) -> Path:
    """Write a Kermany-like chest x-ray set and return its ``chest_xray`` folder:
    ``out_dir/chest_xray/<split>/{NORMAL,PNEUMONIA}/*.jpeg``.

    ``n_normal``/``n_pneumonia`` count images over all splits; patients
    (``cxr_patient_id``) never cross splits. ``split_fractions`` defaults to
    0.8/0.2 for two splits (the first split takes 0.8 and the rest share 0.2
    otherwise). About ``rgb_fraction`` of the files (at least one when > 0)
    are stored as RGB, the rest as grayscale, as in the real set.
    """
    splits = tuple(splits)
    if not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct names, not {splits}")
    if split_fractions is None:
        rest = 0.2 / max(1, len(splits) - 1)
        split_fractions = (0.8, *([rest] * (len(splits) - 1))) if len(splits) > 1 else (1.0,)
    if len(split_fractions) != len(splits) or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        raise ValueError(f"split_fractions {split_fractions} must give one share ≥ 0 per split {splits}")
    fractions = np.asarray(split_fractions, float) / sum(split_fractions)
    if n_normal < 0 or n_pneumonia < 0 or n_normal + n_pneumonia == 0:
        raise ValueError(f"need some images, not n_normal={n_normal}, n_pneumonia={n_pneumonia}")
    if not (0 < width_range[0] <= width_range[1]):
        raise ValueError(f"width_range must be (low, high) pixels, not {width_range}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, 0]))
    root = Path(out_dir) / CXR_FOLDER
    jobs: list[tuple[str, _CxrImage]] = []
    for cls, n in zip(CXR_CLASSES, (n_normal, n_pneumonia)):
        if n == 0:
            continue
        for split, members in zip(splits, _assign_splits(rng, _cxr_patients(rng, cls, n), fractions)):
            jobs += [(split, image) for patient in members for image in patient]
    n_rgb = max(1, round(rgb_fraction * len(jobs))) if rgb_fraction > 0 else 0
    rgb = set(rng.choice(len(jobs), size=min(n_rgb, len(jobs)), replace=False).tolist())
    for split in splits:
        for cls in CXR_CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
    for k, (split, image) in enumerate(progress_bar(jobs, desc="phantom chest x-ray", unit="image",
                                            disable=not progress)):
        image_rng = np.random.default_rng(np.random.SeedSequence([seed, 7, 1, k]))
        picture = _cxr_image(image_rng, image.finding, width_range)
        if k in rgb:
            picture = picture.convert("RGB")
        picture.save(root / split / image.cls / image.name, "JPEG",
                     quality=int(image_rng.integers(85, 96)))
    return root


# --------------------------------------------------------------------------
# Cache: generate once per parameter set, atomically
# --------------------------------------------------------------------------

def _maker(kind: str):
    if kind == "cxr":
        return make_cxr_cohort, {}
    return make_brats_cohort, {"layout": kind.removeprefix("brats")}


def phantom_params(kind: str, seed: int = 0, **sizes) -> dict:
    """All parameters that define a cached cohort (defaults filled in), as
    plain JSON types: what ``ensure_phantom`` hashes and records."""
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {', '.join(KINDS)}")
    maker, fixed = _maker(kind)
    allowed = [name for name in inspect.signature(maker).parameters
               if name not in ("out_dir", "seed", "progress", *fixed)]
    unknown = sorted(set(sizes) - set(allowed))
    if unknown:
        raise TypeError(f"phantom {kind!r} has no parameter(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(allowed)}")
    bound = inspect.signature(maker).bind(None, seed=seed, **fixed, **sizes)
    bound.apply_defaults()
    values = {k: v for k, v in bound.arguments.items() if k not in ("out_dir", "progress")}
    return common.to_builtin({"kind": kind, "version": PHANTOM_VERSION, **values})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def ensure_phantom(
    kind: str,
    cache_root: str | os.PathLike = "data/phantom",
    seed: int = 0,
    progress: bool = True,
    **sizes,
) -> Path:
    """The path of a phantom cohort, generated on first use and reused after.

    ``kind``: ``"brats2021"``, ``"brats2020"`` or ``"cxr"``; ``sizes``: the
    keyword arguments of ``make_brats_cohort`` (``n_subjects``, ``shape``) or
    ``make_cxr_cohort`` (``n_normal``, ``n_pneumonia``, ``splits`` ...).
    The cohort lives in ``cache_root/<kind>-<hash of all parameters>/``
    (``cache_root`` relative to the checkout's root), is generated in a
    temporary sibling folder and renamed into place, and is complete once
    its ``phantom.json`` (parameters, written last) exists. Returns what
    ``make_*_cohort`` returns inside that folder: the folder itself
    (brats2021), its ``MICCAI_BraTS2020_TrainingData`` (brats2020) or its
    ``chest_xray`` (cxr).
    """
    params = phantom_params(kind, seed=seed, **sizes)
    root = Path(cache_root)
    if not root.is_absolute():
        root = common.repo_root() / root
    final = root / f"{kind}-{common.stable_hash(params)}"
    start = time.perf_counter()
    marker = final / MARKER
    if marker.is_file():
        record = common.read_json(marker)
        if record.get("params") == params:
            print(f"phantom {kind}: reused {final / record['cohort']} "
                  f"({time.perf_counter() - start:.2f} s)")
            return final / record["cohort"]
        raise RuntimeError(f"{marker}: parameters differ from the folder's hash; remove {final}")
    if final.exists():                 # incomplete (no marker): never used, replace it
        shutil.rmtree(final)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{final.name}.tmp-*"):   # left by a crashed run
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        maker, fixed = _maker(kind)
        made = maker(tmp, seed=seed, progress=progress, **fixed, **sizes)
        seconds = time.perf_counter() - start
        cohort = made.relative_to(tmp).as_posix()
        common.write_json(tmp / MARKER, {
            "params": params, "cohort": cohort, "seconds": round(seconds, 2),
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():      # not a concurrent twin: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"phantom {kind}: generated {final / cohort} in {time.perf_counter() - start:.1f} s")
    return final / cohort
