"""Several processes for one step, through torch.distributed.

A step that runs with ``processes > 1`` (``./runall.sh --processes N``) is
launched by its notebook as a ``torchrun`` job (:func:`launch`): N processes
(one per GPU where there are GPUs, else N CPU processes with the gloo
backend) run ``python -m helpers.distributed <job> <results_dir> <settings>``;
each takes its share of the work and rank 0 writes the results, which the
notebook then reads back as it would after a one-process run.

Inside a job, :func:`rank_world`, :func:`barrier` and :func:`gather` are
what the sampling and the correlation engine use; outside one (no process
group) they are the one-process case, so the same code runs either way.
This module imports torch only inside a job: the correlation engine, which
must not import torch, asks :func:`rank_world` without loading it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import lifetime, runlock
from .common import display_path

JOBS = ("train_stylegan", "train_diffusion", "sample", "correlate")


class DistributedError(RuntimeError):
    """A multi-process step failed; the message names the rank and its log."""


# --------------------------------------------------------------------------
# Inside a job (or not): rank, world size, barrier, gather
# --------------------------------------------------------------------------

def _process_group():
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def rank_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) outside a job."""
    dist = _process_group()
    return (0, 1) if dist is None else (dist.get_rank(), dist.get_world_size())


def barrier() -> None:
    dist = _process_group()
    if dist is not None:
        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (plain Python/NumPy values), in rank order, on
    every rank; ``[obj]`` outside a job."""
    dist = _process_group()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average(tensor):
    """``tensor`` replaced in place by its mean over all processes (a no-op
    outside a job); returns it."""
    dist = _process_group()
    if dist is not None and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def average_gradients(module) -> None:
    """Average the gradients of ``module``'s trainable parameters over all
    processes, in one flat all-reduce, as DistributedDataParallel does after
    ``backward()``. Why by hand: DDP's hooks do not follow the double
    backward of StyleGAN's R1 and path-length penalties (``autograd.grad``
    with ``create_graph``), nor the networks' ``requires_grad`` switching
    between phases. A parameter without a gradient counts as zero."""
    dist = _process_group()
    if dist is None or dist.get_world_size() == 1:
        return
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    average(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def share(n: int) -> range:
    """This rank's contiguous share of ``n`` items (ranks in order cover 0..n)."""
    rank, world = rank_world()
    return range(rank * n // world, (rank + 1) * n // world)


# --------------------------------------------------------------------------
# Launching a job from a notebook
# --------------------------------------------------------------------------

def check_processes(processes: int, batch_size: int | None = None, what: str = "") -> None:
    """Refuse, before anything starts, a number of processes the machine or
    the batch cannot take."""
    if processes < 1:
        raise ValueError(f"processes must be ≥ 1, got {processes}")
    try:
        import torch

        gpus = torch.cuda.device_count()
    except ImportError:
        gpus = 0
    if gpus and processes > gpus:
        raise ValueError(f"processes={processes} but this machine has {gpus} GPU(s): one process per GPU")
    if batch_size is not None and batch_size % processes:
        raise ValueError(f"{what}batch_size={batch_size} is not divisible by processes={processes}: "
                         f"each process takes batch_size / processes images per step")


def launch(job: str, results_dir: str | os.PathLike, settings: dict, processes: int,
           log_dir: str | os.PathLike) -> None:
    """Run ``job`` (one of :data:`JOBS`) on ``results_dir`` with ``processes``
    torchrun processes on this machine; returns when all finished. A
    failure raises :class:`DistributedError` naming the rank and its log;
    what the job had finished is kept (sampling resumes batch by batch)."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}; expected one of {', '.join(JOBS)}")
    check_processes(processes)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    settings_file = log_dir / f"{job}.settings.json"
    settings_file.write_text(json.dumps(settings))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "--log-dir", str(log_dir), "--redirects", "3", "--tee", "3", "--local-ranks-filter", "0",
               "-m", "helpers.distributed", job, str(results_dir), str(settings_file)]
    from . import sweep

    # the agent dies with this process (its ranks with the agent: main()); an
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
    between them, gradients averaged); the summaries are then read back."""
    from . import sweep
    from .config import as_dict

    if cfg.processes <= 1:
        return sweep.for_every_run(results_dir, _trainer(step), cfg)
    if step == "train_stylegan":
        from .stylegan.trainer import check_batch

        check_batch(cfg, cfg.processes)  # also the minibatch-std group of each process's share
    else:
        check_processes(cfg.processes, cfg.batch_size, f"{step}.")
    launch(step, results_dir, as_dict(cfg), cfg.processes, Path(results_dir) / "logs" / step)
    return {label: _read_summary(run, step) for label, run in sweep.run_dirs(results_dir).items()}


def _trainer(step: str):
    """The function that trains one run for ``step``."""
    from . import sweep

    return {"train_stylegan": sweep.train_stylegan_run, "train_diffusion": sweep.train_diffusion_run}[step]


def _read_summary(run: Path, step: str) -> dict:
    from .common import read_json

    path = run / ("stylegan" if step == "train_stylegan" else "diffusion") / "summary.json"
    return read_json(path)


def engine_cache(run_dir: str | os.PathLike) -> Path:
    """Where a multi-process audit leaves its engine results for the notebook."""
    return Path(run_dir) / "correlation" / ".engine_cache"


def sample_every_run(results_dir: str | os.PathLike, cfg) -> dict[str, dict[str, str]]:
    """Step 04 on every run: ``{label: {model: samples file}}``. With
    ``cfg.processes > 1`` a torchrun job samples each run over all processes
    (the files are identical to a one-process run's)."""
    from . import sampling, sweep
    from .config import as_dict

    if cfg.processes <= 1:
        return sweep.for_every_run(results_dir, sweep.sample_run, cfg)
    launch("sample", results_dir, as_dict(cfg), cfg.processes, Path(results_dir) / "logs" / "sample")
    return {label: {m: str(sampling.samples_path(run, m)) for m in cfg.models
                    if sampling.samples_path(run, m).exists()}
            for label, run in sweep.run_dirs(results_dir).items()}


def audit_every_run(results_dir: str | os.PathLike, cfg) -> dict[str, Any]:
    """Step 05 on every run: ``{label: StudyAudit}``. With ``cfg.processes > 1``
    a torchrun job computes every correlation over all processes and leaves
    the engine's results in each run's :func:`engine_cache`; the audit here
    then reads them back (same code, same files, nothing recomputed)."""
    from . import correlate, sweep
    from .config import as_dict

    runs = sweep.run_dirs(results_dir)
    if cfg.processes > 1:
        launch("correlate", results_dir, as_dict(cfg), cfg.processes, Path(results_dir) / "logs" / "correlate")
    with runlock.for_runs(runs.values()):  # a notebook run by hand; under ./runall.sh the runner holds them
        return {label: correlate.audit_study(run, cfg, engine_cache=engine_cache(run) if cfg.processes > 1 else None)
                for label, run in runs.items()}


# --------------------------------------------------------------------------
# The jobs (python -m helpers.distributed JOB RESULTS_DIR SETTINGS_JSON)
# --------------------------------------------------------------------------

def _init() -> None:
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))


def _run_job(job: str, results_dir: str, settings: dict) -> None:
    from . import config, sweep

    cfg = config.build(job, settings, {k: "the job's settings" for k in settings})
    rank, _ = rank_world()
    for run in sweep.run_dirs(results_dir).values():
        if job in ("train_stylegan", "train_diffusion"):
            _trainer(job)(run, cfg)  # process 0 writes the run's summary.json
        elif job == "sample":
            sweep.sample_run(run, cfg, parallel=False)
        else:
            from . import correlate

            # the engine work only, shared: the notebook's audit reads it back and writes the tables once
            correlate.fill_engine_cache(run, cfg, engine_cache(run), progress=rank == 0)
        barrier()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] not in JOBS:
        print(f"usage: torchrun … -m helpers.distributed {{{','.join(JOBS)}}} RESULTS_DIR SETTINGS_JSON",
              file=sys.stderr)
        return 2
    job, results_dir, settings_file = args
    lifetime.bind_to_parent()  # a rank dies with torchrun's agent, and with the runner
    _init()
    import torch.distributed as dist

    try:
        _run_job(job, results_dir, json.loads(Path(settings_file).read_text()))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
