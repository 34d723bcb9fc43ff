"""The runner behind ./runall.sh: configuration merging, parameter checks,
stamps. (The end-to-end run is in test_smoke.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from helpers import common, pipeline


def write_config(root: Path, dataset: dict, profile: dict) -> None:
    (root / "configs" / "profiles").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "configs" / "toy.yaml").write_text(yaml.safe_dump(dataset))
    (root / "configs" / "profiles" / "small.yaml").write_text(yaml.safe_dump(profile))


def write_notebook(path: Path, parameters: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("x = 1")]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_merge_order_dataset_then_profile_then_dataset_profile(tmp_path):
    write_config(
        tmp_path,
        {"common": {"seed": 1}, "prepare_data": {"image_size": 256, "source": "x"},
         "profiles": {"small": {"prepare_data": {"source": "y"}}}},
        {"prepare_data": {"image_size": 32, "source": "z"}},
    )
    config = common.load_config("toy", "small", tmp_path)
    assert config["prepare_data"] == {"image_size": 32, "source": "y"}
    assert config["common"] == {"seed": 1, "dataset": "toy", "profile": "small"}


def test_unknown_dataset_and_profile_name_the_choices(tmp_path):
    write_config(tmp_path, {}, {})
    with pytest.raises(FileNotFoundError, match="toy"):
        common.load_config("nope", "small", tmp_path)
    with pytest.raises(FileNotFoundError, match="small"):
        common.load_config("toy", "huge", tmp_path)


def test_overrides_parse_yaml_values():
    assert pipeline.parse_overrides(["a.b=3", "a.c=[1, 2]", "d.e=null"]) == {"a": {"b": 3, "c": [1, 2]}, "d": {"e": None}}
    with pytest.raises(pipeline.PipelineError):
        pipeline.parse_overrides(["nodot=3"])


def test_resolve_parameters_injects_common_and_rejects_typos(tmp_path):
    nb = write_notebook(tmp_path / "notebooks" / "02_train_thing.ipynb",
                        'dataset = "a"\nresults_dir = "r"\nseed = 0\nsteps = 1\nraw_dir = None')
    step = pipeline.Step("02_train_thing", nb)
    declared = {"dataset": {}, "results_dir": {}, "seed": {}, "steps": {}, "raw_dir": {}}
    config = {"common": {"seed": 5, "dataset": "toy", "profile": "p"}, "train_thing": {"steps": 9}}
    params = pipeline.resolve_parameters(step, config, declared, tmp_path / "results" / "toy", tmp_path,
                                         raw_dir=str(tmp_path))
    assert params == {"seed": 5, "dataset": "toy", "steps": 9, "results_dir": "results/toy",
                      "raw_dir": str(tmp_path.resolve())}
    config["train_thing"]["stepz"] = 3
    with pytest.raises(pipeline.PipelineError, match="stepz"):
        pipeline.resolve_parameters(step, config, declared, tmp_path / "r", tmp_path)


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
            for name in ("dataset", "profile", "results_dir", "seed"):
                assert name in declared, f"{path.name}: parameters cell lacks {name}"


def test_every_config_section_matches_its_notebook():
    """A key in configs/ that no notebook declares would be rejected at run
    time; catch it here for every dataset and profile."""
    import papermill

    root = common.repo_root()
    steps, _ = pipeline.discover_steps(root)
    declared = {s.section: papermill.inspect_notebook(str(s.notebook)) for s in steps}
    for dataset in sorted(p.stem for p in (root / "configs").glob("*.yaml")):
        for profile in common.available_profiles(root):
            config = common.load_config(dataset, profile, root)
            for step in steps:
                pipeline.resolve_parameters(step, config, declared[step.section], root / "results" / dataset, root)


def test_failed_step_keeps_partial_notebook_and_says_why(tmp_path):
    nb = write_notebook(tmp_path / "nb" / "01_prepare_data.ipynb", "a = 1")
    doc = nbformat.read(nb, as_version=4)
    doc.cells.append(nbformat.v4.new_code_cell("raise ValueError('volume has NaN voxels')"))
    nbformat.write(doc, nb)
    out = tmp_path / "out"
    with pytest.raises(pipeline.PipelineError, match="ValueError: volume has NaN voxels"):
        pipeline.execute_step(pipeline.Step("01_prepare_data", nb), {"a": 2}, out, tmp_path, pipeline.ensure_kernel())
    failed = nbformat.read(out / "01_prepare_data.failed.ipynb", as_version=4)
    assert any("a = 2" in c.source for c in failed.cells)  # the injected parameters are kept
    assert not (out / "01_prepare_data.ipynb").exists()
