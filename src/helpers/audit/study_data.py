"""The images of one audit: a results folder's training and held-out test
arrays with their index tables, and the synthetic sets to audit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import correlation
from ..common import read_json
from ..config import MODELS
from ..layout import Run
from ..sampling import load_samples as load_sample_files


@dataclass
class StudyData:
    """The images of one audit: training (and held-out test) images with
    their index tables where known, and the synthetic sets to audit
    (``{name: (ImageSet, seeds or None)}``)."""

    results: Path | None
    dataset: str
    channel_names: list[str]
    train: correlation.ImageSet
    test: correlation.ImageSet | None
    train_meta: pd.DataFrame | None
    test_meta: pd.DataFrame | None
    synthetic: dict = field(default_factory=dict)

    def images(self, source, label: str = "images") -> correlation.ImageSet:
        """``source`` (array, path or ImageSet) with the data's channel names."""
        if isinstance(source, correlation.ImageSet) and source.channel_names == self.channel_names:
            return source
        return correlation.open_images(source, channel_names=self.channel_names, label=label)

    @property
    def n_train_subjects(self) -> int | None:
        if self.train_meta is None or "subject" not in self.train_meta:
            return None
        return int(self.train_meta["subject"].astype(str).nunique())


def load_study_data(results: str | Path, models: Sequence[str] = ()) -> StudyData:
    """``data/{train,test}.npy`` (memory-mapped) with their index tables, and
    ``samples/<model>.npy`` of each of ``models`` that exists."""
    results = Path(results)
    data = Run(results).data
    meta_path = data.meta
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing — run notebook 01 (prepare data) first")
    meta = read_json(meta_path)
    train = correlation.open_images(data.train, label="train")
    names = [str(n) for n in (meta.get("channels") or [])] or [f"ch{i}" for i in range(train.image_shape[0])]
    if len(names) != train.image_shape[0]:
        raise ValueError(f"{meta_path}: {len(names)} channel names but the images have {train.image_shape[0]} channels")
    train = correlation.open_images(train, channel_names=names)
    train_meta = _read_index(data.train_table, train.n)
    test = test_meta = None
    if data.test.is_file():
        test = correlation.open_images(data.test, channel_names=names, label="test")
        test_meta = _read_index(data.test_table, test.n)
    study = StudyData(results, str(meta.get("dataset", results.name)), names, train, test, train_meta, test_meta)
    for model in available_models(results, models):
        images, seeds = load_samples(results, model, channel_names=names)
        study.synthetic[model] = (images, seeds)
    return study


def _read_index(path: Path, n: int) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing index table (one row per image: subject, slice, label, source)")
    frame = pd.read_csv(path)
    missing = {"subject", "slice"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    if len(frame) != n:
        raise ValueError(f"{path}: {len(frame)} rows but the image array holds {n} images")
    return frame


def available_models(results: str | Path, models: Sequence[str] = MODELS) -> list[str]:
    """The models whose ``samples/<model>.npy`` exists (in the given order)."""
    return [m for m in models if Run(results).samples(m).is_file()]


def load_samples(results: str | Path, model: str, channel_names=None):
    """``(ImageSet, seeds or None)`` for ``samples/<model>.npy``: step 04's
    samples (:func:`helpers.sampling.load_samples`) as the engine takes them,
    with the data's channel names."""
    images, seeds = load_sample_files(results, model)
    images = correlation.open_images(images, channel_names=channel_names, label=model)
    return images, None if seeds is None else seeds["seed"].to_numpy()
