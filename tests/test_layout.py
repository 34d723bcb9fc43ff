"""The results layout (helpers.layout) is the one place that spells a run's
and a results folder's file names, and step 04's samples have one loader
(helpers.sampling.load_samples)."""

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import audit, sampling
from helpers.layout import INDEX_FROM_NOTEBOOKS, RUNNER_FILES, RUNNER_FOLDERS, ResultMissing, Results, Run

SRC = Path(__file__).resolve().parent.parent / "src" / "helpers"
#: file names of steps 01, 05 and 06 and of the runner that only the layout may
#: spell, wherever they stand: alone, or as a part of a path string
NAMES = {"train.npy", "test.npy", "train.csv", "test.csv", "meta.json", "sizes.json", "split.csv", "skipped.csv",
         "slice_fractions.csv", "baseline.csv", "thresholds.csv", "exceedances.csv", "leakage.csv",
         "control_matches.csv", "control_by_kind.csv", "criteria.csv", "coverage.csv", "capacity.csv", "fit.csv",
         "over_training.csv", "fit_rule.json", "plan.txt", "index.html"}
#: folder names only the layout may join (``/ "sweep"``) or spell in a path string
#: (``"sweep/*.csv"``). Alone they may stay: most are also a settings section
#: (``figures``), a table's name or column (``fit``, ``sizes`` in sizes.json),
#: an HTML class or a step's name, and a bare word is not a path.
FOLDERS = {"data", "samples", "correlation", "fit", "sweep", "sizes", "figures", "logs", "notebooks", ".stamps"}
#: path strings that name no result: the checkout's phantom cache (``phantom_cache``'s default)
NOT_RESULTS = {"data/phantom"}


def spelled_paths(source: str, filename: str = "<source>") -> list[tuple[int, str]]:
    """``(line, what)`` of every result name spelled in Python ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value not in NOT_RESULTS:
            value = node.value
            parts = value.split("/") if "/" in value and not any(c.isspace() for c in value) else [value]
            hit = [p for p in parts if p in NAMES or (len(parts) > 1 and p in FOLDERS)]
            if hit:
                found.append((node.lineno, repr(value)))
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
              and isinstance(node.right, ast.Constant) and node.right.value in FOLDERS):
            found.append((node.lineno, f"/ {node.right.value!r}"))
    return found


def test_no_result_path_is_spelled_outside_the_layout():
    found = [f"{path.relative_to(SRC)}:{line} {what}" for path in sorted(SRC.rglob("*.py")) if path.name != "layout.py"
             for line, what in spelled_paths(path.read_text(), str(path))]
    assert not found, "use helpers.layout's accessors:\n" + "\n".join(found)


def test_the_guard_sees_each_way_of_spelling_a_name():
    seen = spelled_paths("a = results / 'sweep'\nb = 'sweep/*.csv'\nc = '*/sizes/*/x'\nd = 'index.html'\n"
                         "e = '../index.html'\nf = Path(r) / 'fit' / 'fit.csv'\n")
    assert [line for line, _ in seen] == [1, 2, 3, 4, 5, 6, 6]
    # a settings section, a table's name, a JSON key, prose: not paths
    assert spelled_paths("cfg['figures']\ntables['fit']\nrows['sizes']\nx = 'see results/<name>/sweep/ here'\n") == []


def test_relative_names_are_those_the_tables_of_expected_files_show():
    rel = Run("")
    assert str(rel.samples("diffusion")) == "samples/diffusion.npy"
    assert str(rel.seeds("diffusion")) == "samples/diffusion_seeds.csv"
    assert str(rel.audit("t1").matches("stylegan")) == "correlation/t1/matches_stylegan.csv"
    assert str(rel.checkpoint_samples("stylegan", 12)) == "samples/checkpoints/stylegan/step_000000012.npy"
    assert str(rel.data.table("test")) == "data/test.csv" and str(rel.training_summary("x")) == "x/summary.json"


def test_a_results_folder_names_its_own_files():
    rel = Results("")
    assert str(rel.sweep.fit) == "sweep/fit.csv" and str(rel.sweep.table("capacity")) == "sweep/capacity.csv"
    assert str(rel.size_run("n00016").data.train) == "sizes/n00016/data/train.npy"
    assert str(rel.size_run("n00016").fit.over_training) == "sizes/n00016/fit/over_training.csv"
    assert str(rel.fit.rule) == "fit/fit_rule.json" and str(rel.logs("sample")) == "logs/sample"
    assert [str(rel.figures), str(rel.plan), str(rel.index)] == ["figures", "plan.txt", "index.html"]
    assert (rel.notebooks.name, rel.stamps.name) == RUNNER_FOLDERS and (rel.plan.name, rel.index.name) == RUNNER_FILES
    assert (rel.notebooks / INDEX_FROM_NOTEBOOKS).as_posix() == "notebooks/../index.html"
    # the results folder is a run too (the only one without a sweep)
    assert Results("r").samples("x") == Run("r").samples("x") and isinstance(Results("r"), Run)


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
