"""helpers.report_checks on hand-made results folders: a good one passes,
each kind of fault in a bad one is found and named."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from helpers import report, report_checks, sweep_figures
from helpers.report_checks import traced

CRITERION = "t1ce: r > baseline_p99"


def _results(root, models=("stylegan", "diffusion"), stride=8, prediction="v_prediction"):
    """A results folder with what the checks read: settings, sizes, a sweep table."""
    (root / "data").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "sweep").mkdir()
    (root / "figures").mkdir()
    (root / "data" / "sizes.json").write_text(json.dumps({"sizes": [
        {"size": 4, "n_subjects": 1, "folder": "sizes/n00004"}, {"size": 16, "n_subjects": 2, "folder": "sizes/n00016"}]}))
    (root / "data" / "meta.json").write_text(json.dumps({"n_train": 288, "n_train_subjects": 32, "image_size": 32,
                                                         "n_test": 37, "n_test_subjects": 4, "source": "phantom_brats",
                                                         "channels": ["T1", "T1ce"]}))
    settings = {"01_prepare_data": {"slice_stride": stride},
                "03_train_diffusion": {"prediction_type": prediction},
                "04_sample": {"models": list(models), **{f"n_{m}": 64 for m in models}}}
    for step, values in settings.items():
        (root / "notebooks" / f"{step}.params.yaml").write_text(yaml.safe_dump({"settings": values}))
    rows = [("whole_subjects", size, group, CRITERION, 64, k) for size, group, k in
            [(4, "diffusion", 41), (4, "stylegan", 0), (16, "diffusion", 3), (16, "stylegan", 0)]]
    frame = pd.DataFrame(rows, columns=["rule", "size", "group", "criterion", "n_images", "n_above"])
    frame["fraction"] = frame.n_above / frame.n_images
    frame = frame.assign(headline="t1ce", wilson_low=frame.fraction / 2, wilson_high=(1 + frame.fraction) / 2)
    frame.to_csv(root / "sweep" / "criteria.csv", index=False)
    pd.DataFrame({"group": ["diffusion"], "criterion": [CRITERION],
                  "message": ["diffusion (t1ce: r > baseline_p99): capacity between 4 and 16"]}).to_csv(
        root / "sweep" / "capacity.csv", index=False)
    pd.DataFrame(columns=["rule", "size"]).to_csv(root / "sweep" / "coverage.csv", index=False)
    (root / "figures" / "sweep.png").write_bytes(b"\x89PNG")
    return root


def _index(root, body: str) -> None:
    (root / "index.html").write_text(f"<!DOCTYPE html><html><body><main><h1>Run 2024</h1>{body}</main></body></html>")


def _report(root, name: str, body: str) -> None:
    (root / "notebooks" / name).write_text(
        f'<html><body><nav><a href="../index.html">back</a></nav><main>{body}'
        '<details class="input"><summary>code</summary><pre>every 3rd slice; optimal_denoiser</pre></details>'
        "</main></body></html>")


def _good_finding() -> str:
    row = {"rule": "whole_subjects", "size": 4, "group": "diffusion", "criterion": CRITERION}
    share = traced(41 / 64, "sweep/criteria.csv", "fraction", row, fmt=".0f", scale=100)
    count = traced(41, "sweep/criteria.csv", "n_above", row, fmt="d")
    size = traced(4, "sweep/criteria.csv", "size", row, fmt="d")
    return (f'<h2 id="finding">The finding</h2><p>At {size} training images diffusion copies {count} of '
            f'<span data-untraced="the sample count">64</span> samples ({share} %).</p>'
            '<p><a href="figures/sweep.png"><img src="figures/sweep.png" alt="sweep"></a> '
            '<a href="#finding">up</a> <a href="notebooks/05_correlate.html#top">05</a> '
            '<a href="https://example.org/x.png">paper</a> <code>fixed_0.95</code></p>')


def test_a_good_folder_passes(tmp_path):
    root = _results(tmp_path / "phantom")
    _index(root, _good_finding())
    _report(root, "05_correlate.html", '<h1 id="top">05</h1><p>Every 8th slice is used; 16 training images.</p>')
    (root / "figures" / "table.md").write_text("| size | model | n_train | n |\n|---|---|---:|---:|\n"
                                               "| 4 | diffusion | 4 | 64 |\n| 16 | stylegan | 288 | 64 |\n")
    problems = report_checks.check_results(root)
    assert problems == [], report_checks.format_problems(root, problems)
    assert report_checks.main([str(root)]) == 0


def test_a_number_that_disagrees_with_its_table_is_named(tmp_path):
    root = _results(tmp_path / "phantom")
    row = {"rule": "whole_subjects", "size": 4, "group": "diffusion", "criterion": CRITERION}
    wrong = traced(0.81, "sweep/criteria.csv", "fraction", row, fmt=".0f", scale=100)  # the table says 64 %
    missing = traced(1, "sweep/criteria.csv", "fraction", {**row, "size": 256}, fmt=".0f")
    _index(root, f"<p>diffusion {wrong} %; at the largest size {missing}; and 37 held-out images</p>")
    messages = [p.message for p in report_checks.check_numbers(root / "index.html", root)]
    assert any(m.startswith("quotes 81 where sweep/criteria.csv") and m.endswith("gives 64") for m in messages)
    assert any("0 rows match" in m for m in messages)
    assert any(m.startswith("37 is not traced to a table") for m in messages)
    assert len(messages) == 3  # 'Run 2024' in the h1 is a title, not a quote


def test_json_keys_trace_too(tmp_path):
    root = _results(tmp_path / "phantom")
    (root / "data" / "meta.json").write_text(json.dumps({"n_train": 288, "shape": [288, 5, 32, 32]}))
    good = traced(288, "data/meta.json", key="n_train", fmt="d")
    bad = traced(31, "data/meta.json", key="shape.2", fmt="d")
    _index(root, f"<p>{good} slices of {bad}² pixels</p>")
    (problem,) = report_checks.check_numbers(root / "index.html", root)
    assert "quotes 31 where data/meta.json (shape.2) gives 32" in problem.message


def test_broken_links_images_and_anchors_are_found(tmp_path):
    root = _results(tmp_path / "phantom")
    _index(root, '<p><a href="figures/gone.csv">t</a><img src="figures/gone.png" alt="">'
                 '<a href="#nowhere">x</a><a href="notebooks/05_correlate.html#top">05</a></p>')
    _report(root, "05_correlate.html", "<h1>no anchor here</h1>")
    (root / "figures" / "notes.md").write_text("See ![fig](sweep.png) and [table](missing.csv).\n")
    messages = sorted(p.message for p in report_checks.check_results(root) if p.check == "links")
    assert messages == [
        "image figures/gone.png does not resolve (no figures/gone.png)",
        "link #nowhere: no anchor #nowhere in index.html",
        "link figures/gone.csv does not resolve (no figures/gone.csv)",
        "link missing.csv does not resolve (no figures/missing.csv)",
        "link notebooks/05_correlate.html#top: no anchor #top in notebooks/05_correlate.html",
    ]


def test_pages_that_mention_what_the_run_did_not_have(tmp_path):
    root = _results(tmp_path / "phantom", stride=1, prediction="v_prediction")
    _index(root, "<p>No correlation results yet: run the steps.</p>")
    _report(root, "06_figures.html",
            "<p>The optimal denoiser copies. Every 8th slice is used. The sizes 4, 16, 64 and 256 slices. "
            "No size sweep in this run. 354 training images. The UNet predicts the noise ε. "
            "256 samples per model.</p>")
    (root / "figures" / "memorization_vs_size.md").write_text(
        "| folder | n_train | model | n |\n|---|---:|---|---:|\n| phantom | 354 | stylegan | 256 |\n")
    found = sorted(p.message for p in report_checks.check_results(root) if p.check == "facts")
    expected = [
        "'256 samples per model': the run sampled 64 images per model",
        "'354 training images': the run's training sets have 4, 16, 288 images",
        "'Every 8th slice': the run kept every slice (slice_stride 1)",
        "'sizes 4, 16, 64 and 256 slices': the run's sizes are 4, 16",
        "mentions optimal_denoiser, which this run did not sample (models: stylegan, diffusion)",
        "row ['phantom', '354', 'stylegan']: n_train 354, the run's training sets have 4, 16, 288 images",
        "row ['phantom', '354', 'stylegan']: stylegan n 256, the run sampled 64 images of stylegan",
        "says 'No correlation results yet' though step 05's results are there",
        "says the diffusion model predicts the noise ε; its settings say v-prediction (prediction_type)",
        "says there is no size sweep; the run swept 4, 16 training images",
    ]
    assert found == sorted(expected)


def test_a_step_reports_own_documentation_may_name_every_model_its_outputs_may_not(tmp_path):
    """A run without the diffusion model (profile reference_noaug): the step
    report's Markdown cells document every model the step can run; only what
    the run wrote (its outputs) must not name a model it did not sample."""
    root = _results(tmp_path / "phantom", models=("stylegan", "optimal_denoiser"))
    _index(root, "<p>Results of StyleGAN and the optimal denoiser.</p>")
    documentation = ('<div class="cell text_cell"><p>Reads stylegan/ and diffusion/pipeline/ '
                     "(the diffusion model's).</p></div>")
    _report(root, "04_sample.html", documentation + '<div class="output"><p>StyleGAN: 64 images.</p></div>')
    assert [p for p in report_checks.check_results(root) if p.check == "facts"] == []
    _report(root, "04_sample.html", documentation + '<div class="output"><p>Diffusion: 64 images.</p></div>')
    assert [p.message for p in report_checks.check_results(root) if p.check == "facts"] == [
        "mentions diffusion, which this run did not sample (models: stylegan, optimal_denoiser)"]


def test_figures_said_to_be_left_out_but_shown(tmp_path):
    root = _results(tmp_path / "phantom", models=("stylegan", "diffusion", "optimal_denoiser"))
    (root / "figures" / "top_matches_optimal_denoiser_t1ce.png").write_bytes(b"\x89PNG")
    _index(root, "<p>the finding</p>")
    _report(root, "06_figures.html", "<p>optimal_denoiser: missing optimal_denoiser/loss_log.csv (an earlier "
                                     "step); figures for it are left out.</p>"
                                     '<img src="../figures/top_matches_optimal_denoiser_t1ce.png" alt="">')
    messages = [p.message for p in report_checks.check_results(root)]
    assert messages == ["says figures for optimal_denoiser are left out, then shows figures of optimal_denoiser"]
    _report(root, "06_figures.html", "<p>optimal_denoiser: missing x; figures for it are left out.</p>")
    assert report_checks.check_results(root) == []


def test_a_comparison_row_of_a_run_that_does_not_exist(tmp_path):
    _results(tmp_path / "phantom")
    (tmp_path / "phantom" / "sizes" / "n00004" / "correlation").mkdir(parents=True)
    (tmp_path / "phantom" / "sizes" / "n00004" / "correlation" / "summary.json").write_text('{"n_test": 37}')
    compare = tmp_path / "compare"
    compare.mkdir()
    pd.DataFrame({"dataset": ["phantom", "phantom/n00004", "phantom/n00004"], "model": ["real_test"] * 2 + ["stylegan"],
                  "n": [291, 36, 64]}).to_csv(compare / "compare_datasets.csv", index=False)
    messages = [p.message for p in report_checks.check_results(compare)]
    assert messages == ["row 'phantom': no such run (phantom/correlation/summary.json does not exist)",
                        "row 'phantom/n00004' real_test: n 36, the run has 37 held-out images"]


def test_the_landing_page_traces_every_number_it_quotes(tmp_path):
    """The landing page of helpers.report as it is: every number of its
    finding is traced to its table, and a changed table is caught."""
    root = _results(tmp_path / "phantom")
    report.write_index(root, "Study results: phantom")
    page = (root / "index.html").read_text()
    assert "41</span>/" in page and "not traced" not in page
    assert report_checks.check_numbers(root / "index.html", root) == []
    assert sweep_figures.load_sweep(root) is not None
    # the table changes after the page was written: the page's number is now stale
    changed = pd.read_csv(root / "sweep" / "criteria.csv")
    changed.loc[(changed["size"] == 4) & (changed.group == "diffusion"), "n_above"] = 40
    changed.to_csv(root / "sweep" / "criteria.csv", index=False)
    messages = [p.message for p in report_checks.check_numbers(root / "index.html", root)]
    assert messages and all("quotes 41 where sweep/criteria.csv" in m for m in messages), messages


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="results folder .*nope does not exist"):
        report_checks.check_results(tmp_path / "nope")
    assert report_checks.main([str(tmp_path / "nope")]) == 2
