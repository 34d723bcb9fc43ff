"""A plan before a long run: what steps 02-05 will cost here.

``./runall.sh DATASET --plan`` prints it and runs nothing; a normal run
prints it before the first of steps 02-05 starts and refuses to start when
the free disk cannot hold what the steps will write (``--force`` starts
anyway). Why: at the paper's settings these steps take days and write tens
of gigabytes, and a user should learn that before, not after.

Times come from a few iterations measured on this machine, on this device,
with the resolved settings and the data's image shape (random images of
that shape: the cost does not depend on their content), scaled by the
number of iterations the step will run. What is measured and how it is
scaled is printed beside each figure (the ``basis``): on a CPU the
measured batch may be smaller than the real one and is scaled linearly;
regularized StyleGAN steps are measured once and spread over their
interval; the augmentation's cost at p > 0, all-reduce traffic and data
loading are not measured. Memory is the peak measured while timing (GPU:
allocated by torch; CPU: the planning process's peak resident set).
Disk sizes are computed from the shapes and parameter counts.

The training-set size is read from ``data/`` when step 01 has run;
otherwise it is an assumption stated in the plan (subjects of the split ×
a typical number of kept slices per subject).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import models
from ..common import display_path
from ..layout import Results, Run
from .measure import (
    StepEstimate,
    estimate_correlation,
    estimate_sampling,
    estimate_training,
)

#: the steps a plan estimates (step 01 too, by its size, when it has not run)
STEPS = ("02", "03", "04", "05")
#: kept slices per BraTS subject with the authors' rule (15 % of the padded
#: slice with T1 > 50): a 40 GB BraTS 2021 train.npy of 5×256² holds
#: ~1.2·10⁵ slices of 1195 subjects
BRATS_SLICES_PER_SUBJECT = 102
#: kept slices per phantom subject (the brain phantom's default geometry)
PHANTOM_SLICES_PER_SUBJECT = 71
BRATS_SUBJECTS = {"brats2021": 1251, "brats2020": 369}
CXR_IMAGES = 5856  # Kermany et al.: train + test + val


class PlanError(RuntimeError):
    """The run would not fit (disk); the message says how much is needed and where."""


@dataclass
class Plan:
    dataset: str
    profile: str
    device: str
    processes: int
    runs: dict[str, tuple[int, int]]      # run label → (training images, held-out images)
    image_shape: tuple[int, int, int]
    data_note: str
    results: Path
    steps: list[StepEstimate] = field(default_factory=list)

    def disk_needed(self, steps: Sequence[str] | None = None) -> int:
        return sum(s.disk_bytes for s in self.steps if steps is None or s.step in steps)

    def text(self) -> str:
        c, h, w = self.image_shape
        sizes = ", ".join(f"{label}: {n:,}" for label, (n, _) in self.runs.items())
        lines = [f"plan: {self.dataset}, profile {self.profile}, {self.device}, {self.processes} process(es); "
                 f"images {c}×{h}×{w}; training images per run: {sizes} ({self.data_note})",
                 f"{'step':<18}{'time':>11}  {'memory':<24}{'disk':>10}  how the time was estimated"]
        for s in self.steps:
            lines.append(f"{s.step:<18}{_duration(s.seconds):>11}  {s.memory:<24}{_size(s.disk_bytes):>10}  {s.basis}")
            lines.append(f"{'':<18}{'':>11}  {'':<24}{'':>10}  writes: {s.disk_what}")
        total = sum(s.seconds or 0.0 for s in self.steps)
        free = free_disk(self.results)
        lines.append(f"{'total':<18}{_duration(total):>11}  {'':<24}{_size(self.disk_needed()):>10}  "
                     f"free on {display_path(existing_parent(self.results))}: {_size(free)}")
        return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _size(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def existing_parent(path: Path) -> Path:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return path


def free_disk(path: Path) -> int:
    return shutil.disk_usage(existing_parent(path)).free


# --------------------------------------------------------------------------
# The training sets: read from data/ or assumed
# --------------------------------------------------------------------------

def run_sizes(resolved, results: Path) -> tuple[dict[str, tuple[int, int]], tuple[int, int, int], str]:
    """``({run label: (n_train, n_test)}, image shape, where the counts come from)``."""
    from .. import sweep

    if Run(results).data.train.is_file():
        runs = {}
        for label, run in sweep.run_dirs(results).items():
            train = np.load(Run(run).data.train, mmap_mode="r")
            test_path = Run(run).data.test
            runs[label] = (len(train), len(np.load(test_path, mmap_mode="r")) if test_path.is_file() else 0)
            shape = tuple(int(s) for s in train.shape[1:])
        return runs, shape, "from data/"
    prep = resolved["prepare_data"]
    n_train, n_test, note = _assumed_counts(prep, _layout(resolved))
    shape = (len(_channel_names(results, prep)), prep.image_size, prep.image_size)
    if prep.train_sizes:
        runs = {sweep.size_label(n, rule): (n, n_test) for rule in prep.subset_rules for n in prep.train_sizes}
    else:
        runs = {"all": (n_train, n_test)}
    return runs, shape, note


def _layout(resolved) -> str:
    return "brats2020" if resolved.dataset == "brats20" else "brats2021"


def _assumed_counts(prep, layout: str) -> tuple[int, int, str]:
    if prep.source in ("brats", "phantom_brats"):
        n_test_subjects = prep.n_test_subjects
        if prep.source == "brats":
            subjects, per = BRATS_SUBJECTS[layout], BRATS_SLICES_PER_SUBJECT
            if prep.split == "authors":
                from ..data.splits import authors_split_file, read_subject_order

                order = read_subject_order(authors_split_file(layout))
                subjects, n_test_subjects = len(order), int((order["split"] == "test").sum())
        else:
            subjects, per = prep.phantom_brats_sizes.n_subjects, PHANTOM_SLICES_PER_SUBJECT
        n_train_subjects = subjects - n_test_subjects
        if prep.n_train_subjects:
            n_train_subjects = min(n_train_subjects, prep.n_train_subjects)
        per = math.ceil(per / max(prep.slice_stride, 1))
        return (n_train_subjects * per, n_test_subjects * per,
                f"assumed: data/ not prepared; {n_train_subjects} training subjects × ~{per} slices")
    total = CXR_IMAGES if prep.source == "cxr" else prep.phantom_cxr_sizes.n_images
    n_test = round(total * prep.test_fraction)
    return total - n_test, n_test, f"assumed: data/ not prepared; {total} images, {prep.test_fraction:.0%} held out"


# --------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------

def make_plan(resolved, results: Path, processes: int | None = None) -> Plan:
    """Estimate steps 02-05 of ``resolved`` (a :class:`helpers.config.Resolved`)
    writing to ``results``; measures on the GPU when there is one."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    processes = processes or resolved["train_diffusion"].processes
    runs, shape, note = run_sizes(resolved, Path(results))
    plan = Plan(resolved.dataset, resolved.profile, torch.cuda.get_device_name(0) if device == "cuda" else "CPU",
                processes, runs, shape, note, Path(results))
    if not Run(results).data.train.is_file():  # step 01 has not run: its arrays count too
        n_train, n_test, _ = _assumed_counts(resolved["prepare_data"], _layout(resolved))
        plan.steps.append(StepEstimate("01 prepare data", None, "not measured (reading the raw files)", "–",
                                       (n_train + n_test) * int(np.prod(shape)), "data/train.npy and test.npy (uint8)"))
    for model in models.trainable():   # each brings its own estimate (helpers.models)
        if models.not_sampled(model.section, resolved["sample"].models):
            continue                   # its step is not run (helpers.pipeline)
        cfg = resolved[model.section]
        with _worker_threads(cfg, runs, device):
            plan.steps.append(estimate_training(model, cfg, shape, runs, device, processes))
    plan.steps.append(estimate_sampling(resolved["sample"], resolved.settings, shape, runs, device, processes))
    channels = _channel_names(results, resolved["prepare_data"])
    plan.steps.append(estimate_correlation(resolved["correlate"], resolved["sample"], channels, shape, runs, device,
                                           processes))
    return plan


@contextlib.contextmanager
def _worker_threads(cfg, runs, device: str):
    """Time a training as it will run: one thread per worker when a sweep's
    runs go side by side on a CPU."""
    import torch

    threads = torch.get_num_threads()
    if cfg.parallel_runs > 1 and len(runs) > 1 and device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _channel_names(results: Path, prep) -> list[str]:
    """The data's channel names: step 01's record, else what step 01 will write."""
    from ..common import read_json
    from ..data.prepare import chosen_channels

    meta = Run(results).data.meta
    if meta.is_file() and isinstance(read_json(meta).get("channels"), list):
        return [str(c) for c in read_json(meta)["channels"]]
    return chosen_channels(prep.source, prep.channels)


def check_disk(plan: Plan, steps: Sequence[str] | None = None) -> None:
    """Refuse when the free disk under the results folder cannot hold what
    ``steps`` (all by default) will write."""
    needed, free = plan.disk_needed(steps), free_disk(plan.results)
    if needed > free:
        raise PlanError(f"the steps to run will write about {_size(needed)} under {display_path(plan.results)}, "
                        f"but {display_path(existing_parent(plan.results))} has {_size(free)} free; free "
                        f"{_size(needed - free)} or choose another --results folder (--force starts anyway)")


def print_plan(resolved, results: Path) -> int:
    """``./runall.sh --plan``: the estimates, and whether the disk holds the outputs; runs nothing."""
    estimate = make_plan(resolved, results)
    print(estimate.text())
    try:
        check_disk(estimate)
        print("plan: the free disk holds what these steps write")
    except PlanError as err:
        print(f"plan: {err}")
    return 0


def check_before_run(resolved, results: Path, numbers: Sequence[str], force: bool) -> None:
    """Before the first of steps 02-05 runs: print the plan (also kept in
    ``results/<name>/plan.txt``) and refuse to start when the disk cannot
    hold what the steps ``numbers`` write, unless ``force``."""
    from ..common import write_text

    estimate = make_plan(resolved, results)
    text = estimate.text()
    print(text, flush=True)
    write_text(Results(results).plan, text + "\n")
    try:
        check_disk(estimate, [s.step for s in estimate.steps if s.step[:2] in numbers])
    except PlanError as err:
        if not force:
            raise
        print(f"study: warning: {err}; starting anyway (--force)")
