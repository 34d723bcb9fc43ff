"""The README's tables of the reference results (the brain phantom, its
StyleGAN arm without augmentation, the chest x-ray phantom) say what the
committed tables say: per size, each model's fit verdict, sharpness and 1-NN accuracy
(``sweep/fit.csv``) and its memorized counts by the paper's criterion and by
the ℓ2 ratio (``sweep/criteria.csv``). Reads files only."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from helpers import common

ROOT = common.repo_root()
BOTH = "| size | StyleGAN fit (sharpness, 1-NN vs limit) | StyleGAN memorized (p99 / ℓ2) | diffusion fit |"
#: (results folder, the README section that holds its table, the table's first header cells, the models of
#: its (fit, memorized) cell pairs, the headline channel of its p99 criterion)
TABLES = [
    ("phantom_reference", "## The reference result", BOTH, ("stylegan", "diffusion"), "t1ce"),
    ("phantom_reference_noaug", "### StyleGAN without augmentation",
     "| size | StyleGAN without augmentation: fit (sharpness, 1-NN vs limit) | memorized (p99 / ℓ2) |",
     ("stylegan",), "t1ce"),
    ("phantom_cxr_reference", "### The chest x-ray phantom at the reference budgets", BOTH,
     ("stylegan", "diffusion"), "gray"),
]


def _readme_rows(section: str, header: str) -> dict[int, list[str]]:
    """The rows of the first table under ``header`` after the heading ``section``."""
    lines = (ROOT / "README.md").read_text().splitlines()
    heading = lines.index(section)
    start = next(i for i, line in enumerate(lines) if i > heading and line.startswith(header))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[int(cells[0])] = cells[1:]
    return rows


@pytest.mark.parametrize(("folder", "section", "header", "models", "channel"), TABLES, ids=[t[0] for t in TABLES])
def test_the_readme_reference_tables_match_the_committed_tables(folder, section, header, models, channel):
    rows = _readme_rows(section, header)
    results = ROOT / "results" / folder
    fit = pd.read_csv(results / "sweep" / "fit.csv", keep_default_na=False, na_values=[""])
    criteria = pd.read_csv(results / "sweep" / "criteria.csv")
    assert sorted(rows) == sorted(fit["size"].unique())
    for size, cells in rows.items():
        for i, model in enumerate(models):
            fit_cell, memorized_cell = cells[2 * i:2 * i + 2]
            row = fit[(fit["size"] == size) & (fit["model"] == model)].iloc[0]
            words = re.sub(r"\*", "", fit_cell)
            assert words.startswith("fitted" if row["fitted"] else "not fitted"), (size, model, fit_cell)
            assert f"{row['sharpness']:.2f}" in words and f"{row['nn_accuracy']:.2f}" in words, (size, model, fit_cell)
            counts = []
            for name in (f"{channel}: r > baseline_p99", "l2: d1 < d2/3"):
                c = criteria[(criteria["size"] == size) & (criteria["group"] == model) & (criteria["criterion"] == name)]
                counts.append(f"{int(c['n_above'].iloc[0])}/{int(c['n_images'].iloc[0])}")
            found = re.findall(r"\d+/\d+", memorized_cell)
            assert found == counts, (size, model, memorized_cell, counts)
