"""The finding of a run in sentences, computed from its tables (never typed),
with every quoted number traced to the table it comes from
(:func:`helpers.report_checks.traced`), so the landing page and the tables
cannot disagree.

The order is the study's reading rule: first what ran, then, per training
set size, whether each model learnt its data (``sweep/fit.csv``), then its
memorization by the paper's criterion at the held-out 99th percentile and by
Gu et al.'s ℓ2 ratio (``sweep/criteria.csv``) — and a comparison of the two
models only where both are fitted. The fixed 0.95 threshold is left to the
reports: on the phantom most real held-out slices exceed it.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from . import common, criteria, models, run_fit, sweep, sweep_figures
from .layout import Results, Run
from .report_checks import traced

#: the tables the finding quotes, relative to the results folder (as its traces name them)
CRITERIA_TABLE = Results("").sweep.criteria.as_posix()
FIT_TABLE = Results("").sweep.fit.as_posix()
META = Run("").data.meta.as_posix()
SIZES = Run("").data.sizes.as_posix()
COMPARED = ("diffusion", "stylegan")


def _untraced(text: str, why: str = "definition") -> str:
    return f'<span data-untraced="{html.escape(why)}">{text}</span>'


def _count(row: pd.Series) -> str:
    if int(row["n_images"]) == 0:   # e.g. ℓ2 on a set of one distinct picture: no second-nearest to compare with
        return "none could be judged"
    key = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in ("rule", "size", "group", "criterion")}
    cell = lambda column, fmt="d", scale=1.0: traced(row[column], CRITERIA_TABLE, column, key, fmt=fmt, scale=scale)  # noqa: E731
    return (f"{cell('n_above')}/{cell('n_images')} ({cell('fraction', '.0f', 100)} %, "
            f"{cell('wilson_low', '.0f', 100)}–{cell('wilson_high', '.0f', 100)})")


RULE_WORDS = {"whole_subjects": "whole subjects", "one_per_subject": "one slice per subject"}


def _subset_words(sizes: pd.DataFrame | None, size: int, rule: str) -> str:
    """'whole subjects, 2 distinct pictures': how a subset was drawn and its
    effective size (``data/sizes.json``'s ``n_distinct``, traced)."""
    words = RULE_WORDS.get(rule, rule)
    if sizes is None or "n_distinct" not in sizes:
        return words
    at = sizes.index[(sizes["size"] == size) & (sizes["rule"] == rule)]
    if len(at) == 0 or pd.isna(sizes.loc[at[0], "n_distinct"]):
        return words
    i = int(at[0])
    return f"{words}, {_distinct(sizes, i)}"


def _distinct(sizes: pd.DataFrame, i: int) -> str:
    """'2 distinct pictures' of row ``i`` of the sizes table, the number traced."""
    n = int(sizes.loc[i, "n_distinct"])
    return f"{traced(n, SIZES, key=f'sizes.{i}.n_distinct', fmt='d')} distinct picture{'' if n == 1 else 's'}"


def _fit_words(fit: pd.DataFrame | None, model: str, size: int, rule: str = sweep.RULES[0]) -> tuple[bool | None, str]:
    """(fitted, words) of ``model`` at ``size`` (and subset ``rule``) by the reading rule, its numbers traced."""
    if fit is None:
        return None, "fit not judged"
    rows = run_fit.rows_of(fit, model, size, rule)
    if rows.empty:
        return None, "fit not judged"
    row = rows.iloc[0]
    key = {"size": int(size), "model": model, **({"rule": rule} if "rule" in fit else {})}
    sharp = traced(row["sharpness"], FIT_TABLE, "sharpness", key, fmt=".2f")
    nn = traced(row["nn_accuracy"], FIT_TABLE, "nn_accuracy", key, fmt=".2f")
    if bool(row["fitted"]):
        return True, f"fitted (sharpness {sharp}, nearest-neighbour accuracy {nn})"
    reasons = []
    why = str(row["why"])
    if "blurred" in why:
        reasons.append(f"blurred: sharpness {sharp}")
    elif "noisy" in why:
        reasons.append(f"noisy: sharpness {sharp}")
    if "1-NN" in why:
        reasons.append(f"told apart from its training images: nearest-neighbour accuracy {nn}")
    return False, "<strong>not fitted</strong> (" + "; ".join(reasons or [html.escape(why)]) + ")"


def setup_markdown(results_dir: str | os.PathLike) -> str:
    """What ran: the data, the sizes, each model's images seen, the samples and the held-out set."""
    results = Path(results_dir)
    meta = common.read_json(Run(results).data.meta)
    sizes = sweep.sizes_table(results)
    source = str(meta.get("source", ""))
    kind = ("the embedded **synthetic phantom** (made by `helpers.phantom`, not patients)"
            if source.startswith("phantom") else f"`{html.escape(str(meta.get('dataset', '')))}`")
    side = traced(meta["image_size"], META, key="image_size", fmt="d")
    table = Run(results).data.train_table
    pictures = "images" if table.is_file() and sweep.is_planar(pd.read_csv(table)) else "slices"
    parts = [f"**What ran.** Data: {kind}, {pictures} of {side}×{side} pixels, channels "
             f"`{', '.join(map(str, meta.get('channels', [])))}`; held-out: "
             f"{traced(meta['n_test'], META, key='n_test', fmt='d')} images of "
             f"{traced(meta['n_test_subjects'], META, key='n_test_subjects', fmt='d')} "
             f"subject{'' if int(meta['n_test_subjects']) == 1 else 's'} never trained on."]
    if sizes is not None:
        several_rules = sizes["rule"].nunique() > 1 if "rule" in sizes else False
        cells = [f"{traced(r.size, SIZES, key=f'sizes.{i}.size', fmt='d')} "
                 f"({traced(r.n_subjects, SIZES, key=f'sizes.{i}.n_subjects', fmt='d')} subj."
                 + (f", {html.escape(RULE_WORDS.get(r.rule, r.rule))}" if several_rules else "")
                 + (f", {_distinct(sizes, i)}"
                    if "n_distinct" in sizes and not pd.isna(r.n_distinct) and int(r.n_distinct) != int(r.size) else "")
                 + ")" for i, r in enumerate(sizes.itertuples())]
        parts.append("Training-set sizes: " + ", ".join(cells) + " images.")
        first = results / sizes["folder"].iloc[0]
        for model in models.trainable():
            path = Run(first).training_summary(model.name)
            if path.is_file():
                rel = path.relative_to(results).as_posix()
                summary = common.read_json(path)
                params = common.read_params(Run(first).output(model.name))
                note = f" ({html.escape(model.training_note(params))})" \
                    if model.training_note is not None and params else ""
                parts.append(f"{html.escape(model.display)}: "
                             f"{traced(summary['images_seen'], rel, key='images_seen', fmt=',d')} "
                             f"images shown in training, at every size{note}.")
    return " ".join(parts)


def sweep_markdown(results_dir: str | os.PathLike) -> str:
    """One bullet per size: each model's fit, then memorization by the two
    criteria, and the comparison where both models are fitted."""
    files = Results(results_dir).sweep
    if not files.criteria.is_file():
        return ""
    table = criteria.in_vocabulary(pd.read_csv(files.criteria))
    sizes = sweep.sizes_table(results_dir)
    fit = pd.read_csv(files.fit, keep_default_na=False, na_values=[""]) if files.fit.is_file() else None
    headline = str(table["headline"].iloc[0])
    shown = [(criteria.correlation_criterion(headline, "baseline_p99"),
              f"{html.escape(headline)} above the held-out p99"), (criteria.L2_CRITERION, "ℓ2 ratio")]
    lines = []
    several_rules = table["rule"].nunique() > 1
    for (rule, size), part in table.groupby(["rule", "size"], sort=False):
        by = {(r.group, r.criterion): r for _, r in part.iterrows()}
        first = part[part["criterion"] == shown[0][0]].iloc[0]   # any row of this size names it
        label = traced(int(size), CRITERIA_TABLE, "size", {"size": int(size), "group": str(first["group"]),
                                                           "criterion": str(first["criterion"]),
                                                           "rule": str(rule)}, fmt="d")
        if several_rules:
            label += f" ({_subset_words(sizes, int(size), str(rule))})"
        fitted = {m: _fit_words(fit, m, int(size), str(rule)) for m in COMPARED if (m, shown[0][0]) in by}
        text = [f"**{label} training images.** " + "; ".join(
            f"{html.escape(models.display_name(m))} {words}" for m, (_, words) in fitted.items()) + "."]
        for name, words in shown:
            cells = [f"{html.escape(models.display_name(m))} {_count(by[(m, name)])}" for m in COMPARED if (m, name) in by]
            if len(cells) < 2:
                continue
            verdict = sweep_figures.interval_verdict(by[("diffusion", name)], by[("stylegan", name)])
            if min(int(by[(m, name)]["n_images"]) for m in COMPARED) == 0:
                verdict = "no comparison (a model with no image judged)"
            unfitted = [models.display_name(m) for m, (ok, _) in fitted.items() if ok is False]
            if unfitted:
                verdict = "no comparison of fitted models (" + " and ".join(unfitted) + " not fitted)"
            text.append(f"Memorized by {words}: " + ", ".join(cells) + f": {verdict}.")
        lines.append("- " + " ".join(text))
    lines += _subset_comparisons(table, sizes, fit, *shown[0])
    refs = []
    largest = table[table["size"] == table["size"].max()]
    for group, words in ((criteria.REAL, "real held-out images"), ("optimal_denoiser", "the optimal denoiser (copies)"),
                         ("gaussian_control", "the Gaussian control (learnt nothing)")):
        rows = largest[(largest["group"] == group) & (largest["criterion"] == shown[1][0])]
        if not rows.empty:
            refs.append(f"{words} {_count(rows.iloc[0])}")
    if refs:
        lines.append("- References at the largest size, by the ℓ2 ratio: " + "; ".join(refs) + ".")
    return "\n".join(lines)


def _run_cell(row: pd.Series, sizes: pd.DataFrame, fit: pd.DataFrame | None, model: str) -> tuple[bool | None, str]:
    """(fitted, 'one slice per subject, 16 slices (16 distinct pictures): k/n (…)') of one run of ``model``."""
    i = int(sizes.index[(sizes["size"] == row["size"]) & (sizes["rule"] == row["rule"])][0])
    ok, _ = _fit_words(fit, model, int(row["size"]), str(row["rule"]))
    return ok, (f"{html.escape(RULE_WORDS.get(str(row['rule']), str(row['rule'])))}, "
                f"{traced(int(row['size']), SIZES, key=f'sizes.{i}.size', fmt='d')} slices "
                f"({_distinct(sizes, i)}): {_count(row)}" + (" — <strong>not fitted</strong>" if ok is False else ""))


def _subset_comparisons(table: pd.DataFrame, sizes: pd.DataFrame | None, fit: pd.DataFrame | None,
                        criterion: str, words: str) -> list[str]:
    """The 2D-from-3D question with two subset rules: per trained model, the
    runs of equal slice count and the runs of equal *distinct pictures*
    compared (Wilson intervals; fitted runs only), and which of the two the
    difference follows — computed, never typed."""
    if sizes is None or "n_distinct" not in sizes or sizes["rule"].nunique() < 2:
        return []
    out = []
    for model in COMPARED:
        rows = table[(table["group"] == model) & (table["criterion"] == criterion)]
        runs = sizes.merge(rows, on=["rule", "size"], suffixes=("_run", ""))
        verdicts, cells, unfitted = {}, [], False
        for key, kind in (("size", "slices"), ("n_distinct", "distinct pictures")):
            for value, same in runs.groupby(key, sort=True):
                same = same.sort_values("rule", key=lambda c: c.map({r: i for i, r in enumerate(sweep.RULES)}))
                if same["rule"].nunique() < 2:
                    continue
                (ok_a, a), (ok_b, b) = (_run_cell(r, sizes, fit, model) for _, r in same.iloc[:2].iterrows())
                first, second = same.iloc[0], same.iloc[1]
                if min(int(first["n_images"]), int(second["n_images"])) == 0:
                    verdict = "no comparison (a run with no image judged)"
                else:
                    verdict = sweep_figures.interval_verdict(first, second)
                    verdicts.setdefault(key, []).append("memorizes more" in verdict)
                    verdict = {"diffusion memorizes more": f"more copied from {RULE_WORDS[str(first['rule'])]}",
                               "StyleGAN memorizes more": f"more copied from {RULE_WORDS[str(second['rule'])]}"
                               }.get(verdict, verdict)
                    if ok_a is False or ok_b is False:
                        unfitted = True
                        verdict += " (between runs not both fitted: the budget's numbers, not fitted models')"
                i = int(sizes.index[(sizes["size"] == first["size"]) & (sizes["rule"] == first["rule"])][0])
                cells.append(f"at {traced(int(value), SIZES, key=f'sizes.{i}.{key}', fmt='d')} {kind}: {a} vs {b}: {verdict}")
        if not cells:
            continue
        drives = ""
        if "size" in verdicts and "n_distinct" in verdicts:
            by_slices, by_pictures = any(verdicts["size"]), any(verdicts["n_distinct"])
            drives = {(True, False): "the difference follows the distinct pictures, not the slice count.",
                      (False, True): "the difference follows the slice count, not the distinct pictures.",
                      (True, True): "both comparisons differ.",
                      (False, False): "neither comparison shows a difference the intervals can show."}[
                          (by_slices, by_pictures)]
            drives = " " + ("Between runs not all fitted, " if unfitted else "") + drives
            drives = drives[:2].upper() + drives[2:]
        out.append(f"- **Slices or distinct pictures? {html.escape(models.display_name(model))}**, memorized by {words}: "
                   + "; ".join(cells) + "." + drives)
    return out


def glossary_markdown() -> str:
    """What the words and numbers of the finding mean."""
    items = [
        ("fitted", "learnt its data, by the reading rule declared before any result: samples as sharp as "
                   "real images (sharpness ratio within the rule's band) and no easier to tell from the training "
                   "images than real unseen images are (the nearest-neighbour two-sample accuracy)"),
        ("held-out p99", "the 99th percentile of the best correlation that real images of subjects never trained "
                         "on reach with the training set: a sample above it is closer to a training image than "
                         "99 % of real unseen images"),
        ("ℓ2 ratio", "Gu et al.'s criterion: the distance to the nearest training image is below a third of the "
                     "distance to the second nearest"),
        ("distinct pictures", "slices of one subject less than one pixel width apart along z show the same picture "
                              "at this resolution (the rule Gu et al.'s criterion uses to skip near-duplicates); "
                              "a training set's distinct pictures are the most of its slices no two of which are "
                              "that close — its effective size"),
        ("k/n (a %, b–c)", "k of n samples memorized, with the Wilson 95 % interval"),
        ("optimal denoiser", "a model that can only return training images: where a perfect copier lands"),
        ("Gaussian control", "each pixel's mean and spread of the training images, drawn independently: a "
                             "generator that learnt nothing, never fitted"),
        ("planted copies", "training images planted as exact, noisy, brightened and shifted copies: a check that "
                           "the correlation finds copies (step 05), not a model"),
    ]
    return "\n".join(f"- **{term}**: " + _untraced(html.escape(text)) for term, text in items)
