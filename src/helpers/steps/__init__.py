"""The step-runner layer: any step on every run of a results folder.

Notebooks 02-05 call :func:`train_every_run`, :func:`sample_every_run` and
:func:`audit_every_run`; each runs its step on every run (the sweep's size
folders, or the one results folder) in one of three ways, chosen by the
settings: one process, one after another; ``parallel_runs`` runs side by
side (:func:`helpers.parallel.run_side_by_side`); or, with
``processes > 1``, a torchrun job (:func:`launch`) in which every run is
shared by all processes. Whichever way, each run's job writes its outputs
into the run's folder; after a torchrun job the results handed back are
read from those files (a training's ``summary.json``, the samples files,
the audit: :func:`helpers.audit.load_audit`).

Which models exist, and how each trains and samples, is the model registry
(:mod:`helpers.models`); which criteria judge a run, the criteria registry
(:mod:`helpers.criteria`). This is the top layer: nothing below imports it.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config, lifetime, models, runlock, sweep
from ..common import display_path, read_json, save_params
from ..config import as_dict
from ..layout import Results, Run
from ..parallel import check_processes, run_side_by_side

STEP_JOBS = ("sample", "correlate")  # with every trainable model's section: the jobs torchrun runs


def jobs() -> tuple[str, ...]:
    """The jobs a torchrun launch accepts: each registered model's training, sampling, the audit."""
    return (*(m.section for m in models.trainable()), *STEP_JOBS)


class DistributedError(RuntimeError):
    """A multi-process step failed; the message names the rank and its log."""


# --------------------------------------------------------------------------
# A step notebook's first cell
# --------------------------------------------------------------------------

@dataclass
class OpenStep:
    """What a step notebook works with (:func:`open_step`)."""

    section: str
    dataset: str
    profile: str
    results_dir: str
    cfg: object              # the step's resolved settings (its schema)
    runs: dict[str, Path]    # every run: the sweep's sizes, or {"all": results_dir}

    @property
    def largest(self) -> Path:
        """The run a notebook shows: the largest training set."""
        return list(self.runs.values())[-1]

    def run(self, label: str | None = None) -> Run:
        """The files of a run (default: the largest)."""
        return Run(self.runs[label] if label else self.largest)

    @property
    def results(self) -> Results:
        """The results folder's files (its own, and those of the run it is without a sweep)."""
        return Results(self.results_dir)

    def settings_markdown(self) -> str:
        from ..figures import settings_markdown

        return settings_markdown(as_dict(self.cfg), self.dataset, self.profile)


def open_step(section: str, dataset: str, profile: str | None, results_dir: str | None, settings: dict | None,
              output: str | None = None) -> OpenStep:
    """A step notebook's setup: what ``./runall.sh`` injects, or for a
    notebook opened by hand what it would (:func:`helpers.config.runall_defaults`);
    the step's settings; every run; and the settings written next to the
    step's outputs (``<run>/<output>/params.yaml``) in every run."""
    dataset, profile, results_dir = config.runall_defaults(dataset, profile, results_dir)
    cfg = config.step_settings(section, dataset, profile, settings)
    runs = sweep.run_dirs(results_dir)
    if output is not None:
        for run in runs.values():
            save_params(as_dict(cfg), Path(run) / output)
    if section == "sample":
        settings_of = functools.cache(lambda other: config.step_settings(other, dataset, profile, None))
        prepare_sampling(cfg, runs.values(), settings_of)  # configs/ resolved once, not once per run
    return OpenStep(section, dataset, profile, results_dir, cfg, runs)


def prepare_sampling(cfg, runs, settings_of: Callable[[str], Any]) -> None:
    """Before step 04: each model of ``cfg.models`` that asks for it prepares
    every run, given ``settings_of(section)``, another step's settings (the
    optimal denoiser keeps the diffusion schedule where no diffusion model is
    trained). Those settings come from ``configs/`` (not ``--set``)."""
    for name in cfg.models:
        prepare = models.get(name, "sample.models").prepare_sampling
        if prepare is not None:
            for run in runs:
                prepare(Path(run), settings_of)


# --------------------------------------------------------------------------
# One run's job of each step
# --------------------------------------------------------------------------

def train_run(section: str) -> Callable[..., dict]:
    """``job(run, settings, parallel)`` training the model of ``section`` on one run."""
    model = models.by_section(section)

    def job(run, settings, parallel: bool = False) -> dict:
        return model.train(Path(run), settings, progress=not parallel, parallel=parallel)

    job.__name__ = job.__qualname__ = f"train_{model.name}_run"
    return job


def _train_job(run, settings, parallel: bool, section: str) -> dict:
    """A picklable one-run training (what side-by-side workers run)."""
    return train_run(section)(run, settings, parallel)


def sample_run(run_dir: str | os.PathLike, settings, parallel: bool = False) -> dict[str, str]:
    """Every model of ``settings.models`` that this run trained (a control
    needs no training) and that has images to sample, ``first_seed + i``
    for image i: ``{model: samples file}``."""
    run_dir = Path(run_dir)
    written: dict[str, str] = {}
    for name in settings.models:
        model = models.get(name, "sample.models")
        if model.trained(run_dir) and model.samples_wanted(settings) > 0:
            path = model.sample(run_dir, settings, progress=not parallel, parallel=parallel)
            if path is not None:
                written[name] = str(path)
        if settings.n_checkpoint_samples > 0 and model.sample_checkpoint is not None and model.trained(run_dir):
            for step in model.checkpoint_steps(run_dir):  # the audits over training (issue 22): not listed in
                model.sample_checkpoint(run_dir, settings, step, progress=not parallel, parallel=parallel)  # `written`
    return written


def for_every_run(results_dir: str | os.PathLike, job: Callable, settings, *extra) -> dict[str, Any]:
    """``job(run_dir, settings, parallel, *extra)`` for every run of the
    results folder, ``settings.parallel_runs`` of them side by side;
    ``{label: result}``."""
    runs = sweep.run_dirs(results_dir)
    parallel = settings.parallel_runs > 1 and len(runs) > 1
    with runlock.for_runs(runs.values()):  # a notebook run by hand; under ./runall.sh the runner holds them
        results = run_side_by_side(job, [(str(path), settings, parallel, *extra) for path in runs.values()],
                                   workers=settings.parallel_runs if parallel else 1)
    return dict(zip(runs, results))


# --------------------------------------------------------------------------
# Launching a torchrun job
# --------------------------------------------------------------------------

def launch(job: str, results_dir: str | os.PathLike, settings: dict, processes: int,
           log_dir: str | os.PathLike) -> None:
    """Run ``job`` (one of :data:`JOBS`) on every run of ``results_dir`` with
    ``processes`` torchrun processes on this machine; returns when all
    finished. A failure raises :class:`DistributedError` naming the rank
    and its log; what the job had finished is kept (sampling resumes batch
    by batch)."""
    if job not in jobs():
        raise ValueError(f"unknown job {job!r}; expected one of {', '.join(jobs())}")
    check_processes(processes)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    settings_file = log_dir / f"{job}.settings.json"
    settings_file.write_text(json.dumps(settings))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "--log-dir", str(log_dir), "--redirects", "3", "--tee", "3", "--local-ranks-filter", "0",
               "-m", "helpers.steps.job", job, str(results_dir), str(settings_file)]
    # the agent dies with this process (its ranks with the agent: job.main()); an
    # interrupt here SIGKILLs the agent (subprocess.run) and so the ranks
    with runlock.for_runs(sweep.run_dirs(results_dir).values()):  # by hand; the runner holds them otherwise
        done = subprocess.run(command, preexec_fn=lifetime.die_with_parent,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if done.returncode != 0:
        raise DistributedError(_failure(log_dir, job, done.returncode))


def _failure(log_dir: Path, job: str, code: int) -> str:
    """The first rank whose log holds a traceback, its last line and its log."""
    for log in sorted(log_dir.rglob("stderr.log"), key=lambda p: (len(p.parts), str(p))):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            last = [line for line in text.splitlines() if line.strip()][-1]
            rank = log.parent.name
            return f"{job}: rank {rank} failed: {last.strip()} (log: {display_path(log)})"
    return f"{job}: torchrun exited with status {code} (logs: {display_path(log_dir)})"


# --------------------------------------------------------------------------
# What notebooks 02-05 call: one process, or a job over several
# --------------------------------------------------------------------------

def train_every_run(results_dir: str | os.PathLike, step: str, cfg) -> dict[str, dict]:
    """Step 02 (``step="train_stylegan"``) or 03 (``"train_diffusion"``) on
    every run: ``{label: training summary}``. With ``cfg.processes > 1`` a
    torchrun job trains each run over all processes (the global batch split
    between them, gradients averaged); the summaries are then read back
    from each run's ``<model>/summary.json``."""
    model = models.by_section(step)
    if cfg.processes <= 1:
        return for_every_run(results_dir, _train_job, cfg, step)
    if model.check_processes is not None:
        model.check_processes(cfg, cfg.processes)
    else:
        check_processes(cfg.processes, cfg.batch_size, f"{step}.")
    launch(step, results_dir, as_dict(cfg), cfg.processes, Results(results_dir).logs(step))
    return {label: read_json(Run(run).training_summary(model.name)) for label, run in sweep.run_dirs(results_dir).items()}


def sample_every_run(results_dir: str | os.PathLike, cfg) -> dict[str, dict[str, str]]:
    """Step 04 on every run: ``{label: {model: samples file}}``. With
    ``cfg.processes > 1`` a torchrun job samples each run over all processes
    (the files are identical to a one-process run's)."""
    models.check_names(cfg.models, "sample.models")
    if cfg.processes <= 1:
        return for_every_run(results_dir, sample_run, cfg)
    launch("sample", results_dir, as_dict(cfg), cfg.processes, Results(results_dir).logs("sample"))
    return {label: {m: str(Run(run).samples(m)) for m in cfg.models if Run(run).samples(m).exists()}
            for label, run in sweep.run_dirs(results_dir).items()}


def audit_every_run(results_dir: str | os.PathLike, cfg) -> dict[str, Any]:
    """Step 05 on every run: ``{label: StudyAudit}`` (the notebook then
    judges every run: :func:`helpers.criteria.judge_every_run`). With
    ``cfg.processes > 1`` a torchrun job audits each run over all processes
    (the engine shares the images; process 0 writes the files) and the
    audits are read back from them (:func:`helpers.audit.load_audit`),
    as the trainings' summaries and the samples are."""
    from .. import audit

    runs = sweep.run_dirs(results_dir)
    if cfg.processes > 1:
        launch("correlate", results_dir, as_dict(cfg), cfg.processes, Results(results_dir).logs("correlate"))
        return {label: audit.load_audit(run) for label, run in runs.items()}
    with runlock.for_runs(runs.values()):  # a notebook run by hand; under ./runall.sh the runner holds them
        return {label: audit.audit_study(run, cfg) for label, run in runs.items()}
