"""The small common base every step uses: result paths, atomic writes,
seeds and provenance (the settings of each step: :mod:`helpers.config`).

It knows no model and imports neither torch nor CuPy, so that data
preparation and the correlation audit start quickly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.std import tqdm as StdTqdm

#: The six steps of the pipeline contract (the README's pipeline table), in order.
STEPS: tuple[str, ...] = (
    "01_prepare_data",
    "02_train_stylegan",
    "03_train_diffusion",
    "04_sample",
    "05_correlate",
    "06_figures",
)


# --------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------

def repo_root() -> Path:
    """The checkout's root: the nearest folder above this file or the working
    directory that holds ``pyproject.toml`` and ``configs/``."""
    for start in (Path.cwd(), Path(__file__).resolve()):
        for folder in (start, *start.parents):
            if (folder / "pyproject.toml").is_file() and (folder / "configs").is_dir():
                return folder
    raise FileNotFoundError(
        "Cannot find the study's root folder (one with pyproject.toml and configs/); "
        "run from inside the checkout."
    )


def results_dir(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """``results/<dataset>`` under ``root`` (the checkout's ``results/`` by
    default, or ``$STUDY_RESULTS`` when set, which tests use)."""
    if root is None:
        root = os.environ.get("STUDY_RESULTS") or repo_root() / "results"
    return Path(root) / dataset


def work_from_checkout() -> Path:
    """Make the checkout's root the working directory, as ``./runall.sh``
    does, so a notebook opened in JupyterLab (whose kernel starts in
    ``notebooks/``) reads and writes the same relative paths."""
    root = repo_root()
    os.chdir(root)
    return root


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the checkout when it lies inside it, else
    absolute: results written inside the repository name no machine's
    folders (the phantom's cache, results/), a user's own data keeps its
    full path."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(repo_root()))
    except (ValueError, FileNotFoundError):
        return str(path)


# --------------------------------------------------------------------------
# Atomic writes: a reader never sees half a file, a crash never leaves one.
# --------------------------------------------------------------------------

#: temporary files a killed run can leave: :func:`atomic_path`'s ``<stem>.tmp<8 random characters><suffix>``,
#: and ``.tmp<6 random characters>``, which safetensors (Rust's ``tempfile`` crate) writes beside the file it
#: saves before renaming it (found by the kill test: a checkpoint killed inside ``save_file``)
TEMP_NAME = re.compile(r"^(.+\.tmp[a-z0-9_]{8}(\.[A-Za-z0-9]+)?|\.tmp[A-Za-z0-9]{6})$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; publish it as ``path`` only
    if the block finishes without an exception: the file's data is flushed
    to disk (fsync), then renamed onto ``path``, then the folder's entry
    flushed. A reader, or a resumed run, sees the old file or the whole new
    one, never a part, even after a kill or a power cut.

    The temporary name keeps the file's suffix (``x.tmp123.npy``) so that
    libraries which add or check suffixes (NumPy, safetensors) behave; a
    killed run's leftovers match :data:`TEMP_NAME`, which the next run
    removes (:func:`remove_temporaries`).
    """
    from .lifetime import fault_point

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".tmp", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        fsync(tmp)
        fault_point("publish", path.name)  # the kill test: between a whole temporary file and its rename
        os.replace(tmp, path)
        fsync(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to the disk (where the
    file system supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. a folder on a file system that cannot fsync one
        pass
    finally:
        os.close(fd)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (:data:`TEMP_NAME`) that a killed run left
    under ``folder``; only for a folder no other process writes to (the run
    holds its lock). Returns what was removed."""
    removed = []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if TEMP_NAME.match(name):
                path = Path(dirpath) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(to_builtin(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(to_builtin(obj), sort_keys=False))


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame atomically, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def to_builtin(obj: Any) -> Any:
    """Turn NumPy scalars/arrays, paths and tuples into plain JSON/YAML types."""
    if isinstance(obj, Mapping):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, str)):
        return str(obj)  # also str subclasses such as torch's version string
    return obj


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-able object, independent of dict order."""
    text = json.dumps(to_builtin(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------

class TextBar(StdTqdm):
    """``tqdm.std.tqdm`` with the study's defaults: outside a terminal
    (papermill) a bar appears only for work that lasts over 10 s and redraws
    at most every 30 s, so a reader's notebook holds a line or two per long
    step, not one per update."""

    def __init__(self, *args, **kwargs):
        interactive = sys.stderr.isatty()
        kwargs.setdefault("mininterval", 1.0 if interactive else 30.0)
        kwargs.setdefault("dynamic_ncols", interactive)
        if not interactive:
            kwargs.setdefault("delay", 10.0)
        super().__init__(*args, **kwargs)


def progress(iterable=None, **kwargs):
    """A text progress bar for the terminal and for executed notebooks alike
    (no widget, so no "IProgress not found" warning); see ``TextBar``."""
    return TextBar(iterable, **kwargs)


def use_text_progress_bars() -> None:
    """Make ``tqdm.auto`` (what diffusers and accelerate import) the study's
    text bar: in a kernel without ipywidgets it would warn "IProgress not
    found", which the reader of an executed notebook cannot act on, and
    print a line per update. Called when helpers is imported, before any
    library imports ``tqdm.auto``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tqdm.auto
        import tqdm.autonotebook
    tqdm.auto.tqdm = tqdm.autonotebook.tqdm = TextBar
    tqdm.auto.trange = tqdm.autonotebook.trange = lambda *args, **kwargs: TextBar(range(*args), **kwargs)


# --------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------

def image_seeds(n: int, first_seed: int) -> np.ndarray:
    """One seed per synthetic image: image ``i`` has seed ``first_seed + i``
    (the authors sampled StyleGAN with seeds 2..100001)."""
    return np.arange(first_seed, first_seed + n, dtype=np.int64)


# --------------------------------------------------------------------------
# Steps (their settings: helpers.config)
# --------------------------------------------------------------------------

def step_section(step: str) -> str:
    """``"02_train_stylegan"`` → ``"train_stylegan"``."""
    return step.split("_", 1)[1]


def provenance() -> dict:
    """What produced a result: versions, commit, host, time."""
    info = {
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo_root(), capture_output=True, text=True, timeout=5,
        )
        info["git_commit"] = commit.stdout.strip() or None
        info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError, FileNotFoundError):
        info["git_commit"] = None
    return info


def save_params(params: Mapping[str, Any], out_dir: str | os.PathLike, name: str = "params.yaml") -> Path:
    """Write the fully resolved parameters of a step next to its outputs,
    with provenance, so every result says how it was made."""
    return write_yaml(Path(out_dir) / name, {"parameters": dict(params), "provenance": provenance()})


def read_params(out_dir: str | os.PathLike, name: str = "params.yaml") -> dict:
    """The parameters :func:`save_params` wrote in ``out_dir`` ({} where there are none)."""
    path = Path(out_dir) / name
    if not path.is_file():
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get("parameters") or {})
