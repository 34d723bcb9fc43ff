"""helpers.verify: every table and number in which two results folders
differ, on hand-made folders with known differences."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import verify


def _folder(root, criteria_fraction=0.25, loss=0.0262, extra=None, seconds=12.0, commit="aaa", samples=None):
    """A small results folder: a sweep table, its Markdown, a summary, params with provenance, samples."""
    root.mkdir(parents=True)
    (root / "sweep").mkdir()
    pd.DataFrame({"rule": ["whole_subjects"] * 2, "size": [4, 16], "group": ["stylegan", "diffusion"],
                  "fraction": [criteria_fraction, 1.0]}).to_csv(root / "sweep" / "criteria.csv", index=False)
    (root / "sweep" / "criteria.md").write_text(
        "# Sweep\n\n| size | group | fraction |\n|---|---|---|\n"
        f"| 4 | stylegan | {criteria_fraction:.2f} |\n| 16 | diffusion | 1.00 |\n")
    (root / "run").mkdir()
    (root / "run" / "summary.json").write_text(json.dumps(
        {"final_loss": loss, "seconds": seconds, "pipeline": f"{root}/run/pipeline", "by": {"t1ce": [1, 2]}}))
    (root / "run" / "params.yaml").write_text(yaml.safe_dump(
        {"parameters": {"seed": 0}, "provenance": {"time_utc": f"t{seconds}", "git_commit": commit}}))
    np.save(root / "run" / "samples.npy", np.arange(12, dtype=np.uint8).reshape(3, 4) if samples is None else samples)
    (root / "run" / "grid.png").write_bytes(b"\x89PNG" + commit.encode())
    (root / "notebooks").mkdir()  # the runner's own: never compared
    (root / "notebooks" / "05_correlate.log").write_text(f"took {seconds} s")
    (root / "index.html").write_text(f"<p>{seconds}</p>")
    for rel in extra or []:
        (root / rel).write_text("x")
    return root


def test_identical_runs_agree_though_timings_paths_and_provenance_differ(tmp_path):
    a = _folder(tmp_path / "a", seconds=10.0, commit="aaa")
    b = _folder(tmp_path / "b", seconds=99.0, commit="bbb")
    result = verify.compare(a, b)
    assert result.ok, verify.format_report(result)
    assert "run/summary.json" in result.equal and "sweep/criteria.md" in result.equal
    assert result.not_compared == ["run/grid.png"]
    assert result.provenance["run: git_commit"] == {"aaa"} and result.provenance["reference: git_commit"] == {"bbb"}
    assert verify.main([str(a), str(b)]) == 0


def test_every_differing_number_is_listed_with_file_place_and_both_values(tmp_path, capsys):
    samples = np.arange(12, dtype=np.uint8).reshape(3, 4)
    samples[2, 1] = 200
    a = _folder(tmp_path / "a", criteria_fraction=0.5, loss=0.0286, extra=["new.csv"], samples=samples)
    b = _folder(tmp_path / "b", extra=["old.md"])
    result = verify.compare(a, b)
    assert not result.ok
    csv = result.differ["sweep/criteria.csv"]
    assert [(d.where, d.run, d.reference) for d in csv] == [
        ("row 1 (rule=whole_subjects, size=4, group=stylegan) fraction", "0.5", "0.25")]
    md = result.differ["sweep/criteria.md"]
    assert [(d.where, d.run, d.reference) for d in md] == [("line 5 (4) fraction", "0.50", "0.25")]
    assert [(d.where, d.run, d.reference) for d in result.differ["run/summary.json"]] == [
        ("final_loss", "0.0286", "0.0262")]
    (npy,) = result.differ["run/samples.npy"]
    assert "1 of 12 elements differ" in npy.where and "(2, 1)" in npy.where and (npy.run, npy.reference) == ("200", "9")
    assert result.only_in_run == ["new.csv"] and result.only_in_reference == ["old.md"]
    assert verify.main([str(a), str(b)]) == 1
    out = capsys.readouterr().out
    # counts first, then each file's differences, then the files on one side only
    assert out.index("files compared") < out.index("sweep/criteria.csv: 1 value") < out.index("Only in the run")
    assert "final_loss: 0.0286 | 0.0262" in out


def test_tolerance_absorbs_float_noise_only(tmp_path):
    a = _folder(tmp_path / "a", loss=0.02620000001, criteria_fraction=0.2500000001)
    b = _folder(tmp_path / "b")
    assert not verify.compare(a, b).ok  # exact by default
    assert verify.compare(a, b, rtol=1e-6).ok
    c = _folder(tmp_path / "c", loss=0.0263)
    assert set(verify.compare(c, b, rtol=1e-6).differ) == {"run/summary.json"}


def test_rows_columns_and_lines_added_or_removed_are_reported(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pd.DataFrame({"size": [4, 16, 64], "k": [1, 2, 3]}).to_csv(a / "t.csv", index=False)
    pd.DataFrame({"size": [4, 16], "n": [1, 2]}).to_csv(b / "t.csv", index=False)
    (a / "n.md").write_text("one\ntwo\nthree\n")
    (b / "n.md").write_text("one\nthree\n")
    result = verify.compare(a, b)
    where = [d.where for d in result.differ["t.csv"]]
    assert where == ["columns", "rows"]
    assert [(d.where, d.run, d.reference) for d in result.differ["n.md"]] == [("line 2 of the run", "two", "(missing)")]


def test_binary_option_compares_bytes_of_images(tmp_path):
    a = _folder(tmp_path / "a", commit="aaa")
    b = _folder(tmp_path / "b", commit="bbb")
    result = verify.compare(a, b, binary=True)
    assert list(result.differ) == ["run/grid.png"]


def test_bad_folder_is_named_and_exit_status_is_2(tmp_path, capsys):
    a = _folder(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="reference folder .*nowhere does not exist"):
        verify.compare(a, tmp_path / "nowhere")
    assert verify.main([str(a), str(tmp_path / "nowhere")]) == 2
    assert "verify: error" in capsys.readouterr().err


def test_unreadable_table_is_a_difference_not_a_crash(tmp_path):
    a = _folder(tmp_path / "a")
    b = _folder(tmp_path / "b")
    (a / "run" / "summary.json").write_text("{not json")
    (d,) = verify.compare(a, b).differ["run/summary.json"]
    assert d.where == "could not be read" and "JSONDecodeError" in d.run


def test_speeds_quoted_in_a_text_are_not_results_but_the_choice_is(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    note = "{}: {}× the float path (probe, 2 core(s)); 2,630,388 pairs/s"
    (a / "summary.json").write_text(json.dumps({"note": note.format("integer", "97.7"), "pairs_per_second": 5.0}))
    (b / "summary.json").write_text(json.dumps({"note": note.format("integer", "6.2"), "pairs_per_second": 9.0}))
    assert verify.compare(a, b).ok
    (b / "summary.json").write_text(json.dumps({"note": note.format("float", "6.2")}))
    assert [d.where for d in verify.compare(a, b).differ["summary.json"]] == ["note"]
