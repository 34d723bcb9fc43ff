"""One torchrun rank of a step (``python -m helpers.steps.job JOB RESULTS_DIR
SETTINGS_JSON``), launched by :func:`helpers.steps.launch`: every run of the
results folder in turn, each shared by all processes; rank 0 writes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .. import config, lifetime, sweep
from ..parallel import barrier, rank_world
from . import STEP_JOBS, jobs, sample_run, train_run


def _init() -> None:
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))


def run_job(job: str, results_dir: str, settings: dict) -> None:
    cfg = config.build(job, settings, {k: "the job's settings" for k in settings})
    rank, _ = rank_world()
    for run in sweep.run_dirs(results_dir).values():
        if job not in STEP_JOBS:
            train_run(job)(run, cfg)  # process 0 writes the run's summary.json
        elif job == "sample":
            sample_run(run, cfg, parallel=False)
        else:
            from .. import audit

            audit.audit_study(run, cfg, progress=rank == 0)  # the engine shares the work; rank 0 writes
        barrier()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] not in jobs():
        print(f"usage: torchrun … -m helpers.steps.job {{{','.join(jobs())}}} RESULTS_DIR SETTINGS_JSON",
              file=sys.stderr)
        return 2
    job, results_dir, settings_file = args
    lifetime.bind_to_parent()  # a rank dies with torchrun's agent, and with the runner
    _init()
    import torch.distributed as dist

    try:
        run_job(job, results_dir, json.loads(Path(settings_file).read_text()))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
