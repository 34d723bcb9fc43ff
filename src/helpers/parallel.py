"""The parallel primitives every layer may use: a process's rank and the
number of processes of a torch.distributed job (:func:`rank_world`,
:func:`barrier`, :func:`gather`, :func:`share`, gradient averaging), and
jobs run side by side in a pool of one-thread worker processes
(:func:`run_side_by_side`).

Outside a job (no process group) the primitives are the one-process case, so
the same code runs either way. This module imports torch only inside a job
or a worker: the correlation engine, which must not import torch, asks
:func:`rank_world` without loading it. What launches a job and runs a step
on every run of a sweep is the step-runner layer above (:mod:`helpers.steps`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from . import lifetime

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



# --------------------------------------------------------------------------
# Runs side by side
# --------------------------------------------------------------------------

def _one_thread_worker(threads: int, parent: int) -> None:  # pragma: no cover - runs in the worker
    """A side-by-side worker's start: it dies with the process that started
    it (and with the runner), so no worker of a killed run writes on."""
    lifetime.bind_to_parent(parent)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_side_by_side(function: Callable[..., Any], jobs: Sequence[tuple], workers: int = 1,
                     threads_per_worker: int = 1) -> list[Any]:
    """``[function(*job) for job in jobs]``, in ``workers`` processes of
    ``threads_per_worker`` torch threads each when ``workers`` > 1 (two
    trainings of one thread each use two cores better than one training with
    two threads, whose threads wait on each other). Results in job order;
    the first failure is raised after the other jobs finished (their
    outputs, e.g. checkpoints, are kept). The workers die with this process
    (:func:`helpers.lifetime.bind_to_parent`); an interrupt (Ctrl-C, or the
    runner stopping the kernel) stops them before it is raised."""
    if workers <= 1 or len(jobs) <= 1:
        return [function(*job) for job in jobs]
    context = get_context("spawn")  # no forked torch/OpenMP state
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                               initializer=_one_thread_worker, initargs=(threads_per_worker, os.getpid()))
    try:
        futures = [pool.submit(function, *job) for job in jobs]
        errors = [f.exception() for f in futures]
    except BaseException:  # KeyboardInterrupt: no worker goes on writing after the notebook stopped
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]
