"""The results layout (helpers.layout) is the one place that spells a run's
file names, and step 04's samples have one loader (helpers.sampling.load_samples)."""

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import audit, sampling
from helpers.layout import ResultMissing, Run

SRC = Path(__file__).resolve().parent.parent / "src" / "helpers"
#: file names of steps 01 and 05 that only the layout may spell (a sweep's own
#: criteria.csv/coverage.csv under sweep/ are the sweep's, not a run's)
NAMES = {"train.npy", "test.npy", "train.csv", "test.csv", "meta.json", "sizes.json", "baseline.csv",
         "thresholds.csv", "exceedances.csv", "leakage.csv", "control_matches.csv", "control_by_kind.csv"}
FOLDERS = {"data", "samples", "correlation"}


def test_no_result_path_is_spelled_outside_the_layout():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
            elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
                  and isinstance(node.right, ast.Constant) and node.right.value in FOLDERS):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} / {node.right.value!r}")
    assert not found, "use helpers.layout's accessors:\n" + "\n".join(found)


def test_relative_names_are_those_the_tables_of_expected_files_show():
    rel = Run("")
    assert str(rel.samples("diffusion")) == "samples/diffusion.npy"
    assert str(rel.seeds("diffusion")) == "samples/diffusion_seeds.csv"
    assert str(rel.audit("t1").matches("stylegan")) == "correlation/t1/matches_stylegan.csv"
    assert str(rel.checkpoint_samples("stylegan", 12)) == "samples/checkpoints/stylegan/step_000000012.npy"
    assert str(rel.data.table("test")) == "data/test.csv" and str(rel.training_summary("x")) == "x/summary.json"


def _sample(run: Path, n: int = 5) -> Path:
    def generate(seeds):
        return np.stack([np.full((1, 4, 4), s % 256, np.uint8) for s in seeds])

    return sampling.sample_to_npy(generate, Run(run).samples("toy"), n, 100, (1, 4, 4), batch_size=2, progress=False)


def test_the_one_sample_loader(tmp_path):
    _sample(tmp_path)
    images, seeds = sampling.load_samples(tmp_path, "toy")
    assert isinstance(images, np.memmap) and images.shape == (5, 1, 4, 4)
    assert list(seeds["seed"]) == [100, 101, 102, 103, 104] and images[3].max() == 103
    # the audit's view of the same file: the engine's image set and the seeds
    image_set, seed_array = audit.load_samples(tmp_path, "toy", channel_names=["gray"])
    assert image_set.n == 5 and image_set.channel_names == ["gray"] and list(seed_array) == list(seeds["seed"])
    # a seed table that is not one row per image, or none: the samples still load, without seeds
    pd.read_csv(Run(tmp_path).seeds("toy")).head(3).to_csv(Run(tmp_path).seeds("toy"), index=False)
    assert sampling.load_samples(tmp_path, "toy")[1] is None
    Run(tmp_path).seeds("toy").unlink()
    assert sampling.load_samples(tmp_path, "toy")[1] is None and audit.load_samples(tmp_path, "toy")[1] is None
    with pytest.raises(ResultMissing, match="samples/other.npy: missing; it is written by notebooks/04_sample"):
        sampling.load_samples(tmp_path, "other")
