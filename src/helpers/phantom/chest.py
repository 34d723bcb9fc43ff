"""Chest phantom: a Kermany-like chest x-ray set,
``chest_xray/<split>/{NORMAL,PNEUMONIA}/*.jpeg``.

Films are drawn procedurally (lungs, ribs, heart, clavicles, diaphragm,
spine, soft tissue; patchy opacities for pneumonia). Image ``k`` depends
only on ``(seed, k)`` and the patient list. File names follow the real set,
so the reader's one parser of patient ids (:func:`helpers.data.cxr.parse_cxr_patient`)
is exercised on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..common import progress as progress_bar
from ..data.cxr import CXR_CLASSES, parse_cxr_patient
from .fields import _smooth_field

if TYPE_CHECKING:
    from PIL import Image

CXR_FOLDER = "chest_xray"
DEFAULT_CXR_NORMAL = 100
DEFAULT_CXR_PNEUMONIA = 200

#: The patient of a Kermany file name (``IM-0115-0001.jpeg`` → ``IM-0115``,
#: ``NORMAL2-IM-1427-0001.jpeg`` → ``NORMAL2-IM-1427``, ``person1_bacteria_1.jpeg``
#: → ``person1``): the data reader's parser, so generator and reader cannot disagree.
cxr_patient_id = parse_cxr_patient


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


def _cxr_image(rng: np.random.Generator, finding: str, width_range) -> Image.Image:
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
