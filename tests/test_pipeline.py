"""The runner behind ./runall.sh: what it injects, stamps, failures
(settings: test_config.py). (The end-to-end run is in test_smoke.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from helpers import common, config, pipeline, steps
from helpers.layout import Results


def write_notebook(path: Path, parameters: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("x = 1")]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_notebook_parameters_are_the_run_and_one_settings_dict(tmp_path):
    nb = write_notebook(tmp_path / "notebooks" / "04_sample.ipynb",
                        'dataset = "a"\nprofile = "p"\nresults_dir = "r"\nsettings = None')
    step = pipeline.Step("04_sample", nb)
    declared = {name: {} for name in pipeline.NOTEBOOK_PARAMETERS}
    resolved = config.resolve("phantom", "smoke", {"sample": {"n_stylegan": 3}})
    params = pipeline.notebook_parameters(step, resolved, tmp_path / "results" / "x", tmp_path, declared)
    assert params["dataset"] == "phantom" and params["profile"] == "smoke" and params["results_dir"] == "results/x"
    assert params["settings"] == config.as_dict(resolved["sample"]) and params["settings"]["n_stylegan"] == 3
    with pytest.raises(pipeline.PipelineError, match="also declares: n_stylegan"):
        pipeline.notebook_parameters(step, resolved, tmp_path, tmp_path, {**declared, "n_stylegan": {}})
    with pytest.raises(pipeline.PipelineError, match="missing: settings"):
        pipeline.notebook_parameters(step, resolved, tmp_path, tmp_path, {"dataset": {}, "profile": {}, "results_dir": {}})


def test_show_params_prints_sources_and_runs_nothing(tmp_path, capsys):
    assert pipeline.main(["brats20", "--profile", "paper", "--show-params", "--results", str(tmp_path),
                          "--set", "sample.n_stylegan=5"]) == 0
    out = capsys.readouterr().out
    assert "prediction_type:" in out and "epsilon" in out
    assert "max_steps:" in out and "30000" in out
    assert "split:" in out and "authors" in out and "configs/brats20.yaml" in out
    assert "# --set" in out and "# configs/profiles/paper.yaml" in out
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


def test_bad_settings_stop_the_runner_with_the_file_named(tmp_path, capsys):
    assert pipeline.main(["phantom", "--profile", "smoke", "--results", str(tmp_path),
                          "--set", "sample.n_stylgan=5"]) == 1
    err = capsys.readouterr().err
    assert "--set" in err and "sample.n_stylgan" in err and "n_stylegan" in err
    assert not any(tmp_path.iterdir())


def test_stamp_key_changes_with_notebook_params_and_upstream(tmp_path):
    nb = write_notebook(tmp_path / "01_prepare_data.ipynb", "a = 1")
    step = pipeline.Step("01_prepare_data", nb)
    key = pipeline.stamp_key(step, {"a": 1}, [], None)
    assert key == pipeline.stamp_key(step, {"a": 1}, [], None)
    assert key != pipeline.stamp_key(step, {"a": 2}, [], None)
    assert key != pipeline.stamp_key(step, {"a": 1}, [{"outputs": {"data/x": [1, 2]}}], None)
    assert key != pipeline.stamp_key(step, {"a": 1}, [], "rawhash")
    write_notebook(nb, "a = 2")
    assert key != pipeline.stamp_key(step, {"a": 1}, [], None)


def test_outputs_intact_notices_deleted_or_changed_files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.npy").write_bytes(b"abc")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01.log").write_text("not an output")
    snap = pipeline.snapshot(tmp_path)
    assert list(snap) == ["data/train.npy"]
    outputs = {k: list(v) for k, v in snap.items()}
    assert pipeline.outputs_intact(outputs, tmp_path)
    (tmp_path / "data" / "train.npy").write_bytes(b"abcd")
    assert not pipeline.outputs_intact(outputs, tmp_path)
    (tmp_path / "data" / "train.npy").unlink()
    assert not pipeline.outputs_intact(outputs, tmp_path)


def test_select_steps_by_number(tmp_path):
    steps = [pipeline.Step(n, tmp_path / f"{n}.ipynb") for n in ("01_a", "02_b", "03_c")]
    assert [s.name for s in pipeline._select(steps, "2", None)] == ["02_b", "03_c"]
    assert [s.name for s in pipeline._select(steps, None, "03")] == ["03_c"]
    with pytest.raises(pipeline.PipelineError, match="--only 07"):
        pipeline._select(steps, None, "07")


def test_repo_notebooks_follow_the_conventions():
    """Every source notebook has one parameters cell, literal defaults that
    include the common names, and no stored outputs."""
    import papermill

    root = common.repo_root()
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: expected exactly one cell tagged 'parameters'"
        assert not any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{path.name} has outputs"
        declared = papermill.inspect_notebook(str(path))
        if path.stem[:2].isdigit():
            assert list(declared) == list(pipeline.NOTEBOOK_PARAMETERS), (path.name, list(declared))
            # opened by hand in JupyterLab it resolves what ./runall.sh would inject (steps.open_step does)
            text = path.read_text()
            assert ("config.runall_defaults(dataset, profile, results_dir)" in text
                    or "steps.open_step(" in text), path.name
            assert declared["profile"]["default"] == "None" and declared["results_dir"]["default"] == "None"


def test_failed_step_keeps_partial_notebook_and_says_why(tmp_path):
    nb = write_notebook(tmp_path / "nb" / "01_prepare_data.ipynb", "a = 1")
    doc = nbformat.read(nb, as_version=4)
    doc.cells.append(nbformat.v4.new_code_cell("raise ValueError('BraTS_001_t1.nii.gz:\\nvolume has NaN voxels')"))
    nbformat.write(doc, nb)
    out = tmp_path / "out"
    with pytest.raises(pipeline.PipelineError, match="ValueError: BraTS_001_t1.nii.gz: volume has NaN voxels"):
        pipeline.execute_step(pipeline.Step("01_prepare_data", nb), {"a": 2}, out, tmp_path, pipeline.ensure_kernel())
    failed = nbformat.read(out / "01_prepare_data.failed.ipynb", as_version=4)
    assert any("a = 2" in c.source for c in failed.cells)  # the injected parameters are kept
    assert not (out / "01_prepare_data.ipynb").exists()


def test_executed_notebooks_name_no_machine_folder(tmp_path):
    nb = write_notebook(tmp_path / "nb" / "01_prepare_data.ipynb", "a = 1")
    doc = nbformat.read(nb, as_version=4)
    doc.cells.append(nbformat.v4.new_code_cell(f"print({str(tmp_path / 'data' / 'phantom')!r})"))
    nbformat.write(doc, nb)
    out = tmp_path / "out"
    pipeline.execute_step(pipeline.Step("01_prepare_data", nb), {"a": 2}, out, tmp_path, pipeline.ensure_kernel())
    for name in ("01_prepare_data.ipynb", "01_prepare_data.html"):
        text = (out / name).read_text()
        assert str(tmp_path) not in text, name
    assert "data/phantom" in (out / "01_prepare_data.ipynb").read_text()


def test_from_to_and_only_select_steps(tmp_path):
    steps = [pipeline.Step(f"0{i}_s", tmp_path / f"0{i}_s.ipynb") for i in range(1, 7)]
    names = lambda selected: [s.number for s in selected]  # noqa: E731
    assert names(pipeline._select(steps, None, None, "05")) == ["01", "02", "03", "04", "05"]
    assert names(pipeline._select(steps, "02", None, "04")) == ["02", "03", "04"]
    assert names(pipeline._select(steps, None, "3")) == ["03"]
    with pytest.raises(pipeline.PipelineError, match="--to 9: no notebook"):
        pipeline._select(steps, None, None, "9")


def test_the_runners_own_files_are_no_steps_outputs(tmp_path):
    """The plan and the landing page (rewritten around the steps) and the
    locks must not count as a step's outputs, or a later run would find the
    step's outputs changed and run it again."""
    for rel in ("plan.txt", "index.html", ".study.lock", "sizes/n1/.study.lock", "sizes/n1/plan.txt", "data/x.npy"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert sorted(pipeline.snapshot(tmp_path)) == ["data/x.npy", "sizes/n1/plan.txt"]


def test_open_step_is_a_step_notebook_s_setup(tmp_path, monkeypatch):
    """What the first cell of notebooks 02-05 does: the settings, every run, params.yaml beside the outputs."""
    from helpers import sweep

    monkeypatch.setenv("STUDY_RESULTS", str(tmp_path))
    results = tmp_path / "phantom"
    common.write_json(results / "data" / sweep.SIZES_FILE,
                      {"sizes": [{"size": 4, "rule": "whole_subjects", "label": "n00004", "folder": "sizes/n00004"},
                                 {"size": 8, "rule": "whole_subjects", "label": "n00008", "folder": "sizes/n00008"}]})
    step = steps.open_step("sample", "phantom", "smoke", None, None, output="samples")
    assert (step.dataset, step.profile, step.results_dir) == ("phantom", "smoke", str(results))
    assert step.cfg == config.step_settings("sample", "phantom", "smoke", None)
    assert list(step.runs) == ["n00004", "n00008"] and step.largest == results / "sizes" / "n00008"
    assert all((run / "samples" / "params.yaml").is_file() for run in step.runs.values())
    assert step.run().samples("diffusion") == results / "sizes" / "n00008" / "samples" / "diffusion.npy"
    assert "profile smoke" in step.settings_markdown()


def test_kernel_sockets_live_in_a_private_folder_removed_with_the_kernel(tmp_path, monkeypatch):
    """A real kernel: its IPC sockets are not written into the working
    directory (they were left in the user's checkout), and go with it."""
    from jupyter_client.utils import run_sync

    monkeypatch.chdir(tmp_path)
    manager = pipeline._kernel_manager_class()(kernel_name=pipeline.ensure_kernel())
    run_sync(manager.start_kernel)()
    client = manager.blocking_client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=60)
        sockets = list(Path(manager.ipc_dir).glob("kernel-*"))
        assert sockets, "the kernel's sockets should be in its private folder"
        assert not list(tmp_path.iterdir()), "nothing is written into the working directory"
    finally:
        client.stop_channels()
        run_sync(manager.shutdown_kernel)(now=True)
    assert not Path(manager.ipc_dir).exists()


def test_a_folder_of_another_profile_is_not_overwritten_by_accident(tmp_path, capsys):
    stamps = Results(tmp_path / "phantom").stamps
    stamps.mkdir(parents=True)
    common.write_json(stamps / "01_prepare_data.json", {"key": "k", "profile": "cpu", "outputs": {}})
    assert pipeline.main(["phantom", "--profile", "smoke", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "profile 'cpu'" in err and "profile 'smoke'" in err
    assert "--name phantom_smoke" in err and "--force" in err
    assert not Results(tmp_path / "phantom").notebooks.exists()  # no step ran


def test_a_model_left_out_of_the_models_is_not_trained(tmp_path, capsys):
    """A profile that samples no diffusion model (reference_noaug) does not train one."""
    args = ["phantom", "--profile", "smoke", "--results", str(tmp_path), "--only", "03",
            "--set", "common.models=[stylegan,optimal_denoiser]"]
    assert pipeline.main(args) == 0
    assert "[03] 03_train_diffusion: not run (diffusion is not in sample.models)" in capsys.readouterr().out
    assert not (Results(tmp_path / "phantom").notebooks / "03_train_diffusion.ipynb").exists()
