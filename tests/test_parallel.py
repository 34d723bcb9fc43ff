"""Several processes through torch.distributed (gloo on the CPU): sampling
and correlation give exactly what one process gives, a failed rank is named,
a stopped sampling run resumes."""

from __future__ import annotations

import os
import socket
import sys

import numpy as np
import pytest
import torch.multiprocessing as mp

from helpers import correlation, parallel, sampling, steps


def _entry(rank, world, init_method, fn, args):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()
    # Done: leave without the interpreter's teardown. A rank whose work had finished was
    # now and then aborted there by C++ ("terminate called without an active exception",
    # no Python frame left: a joinable thread destroyed at exit), 1 run in 3-8 of the
    # 2-process StyleGAN test, with a file store and with a TCP store alike. A failure
    # above still raises, and mp.spawn reports it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ranks(tmp_path, world, fn, *args):
    """``fn(*args)`` in ``world`` real processes joined in one gloo group,
    through a TCP store on the loopback, as torchrun's ranks are."""
    init = f"tcp://127.0.0.1:{_free_port()}"
    mp.spawn(_entry, args=(world, init, fn, args), nprocs=world, join=True)


def images_of(seeds, fail_at=None):
    """A generator whose image depends on its seed only (like the models')."""
    if fail_at is not None and fail_at in seeds:
        raise RuntimeError(f"stopped at seed {fail_at}")
    return np.stack([np.random.default_rng(s).integers(0, 256, (2, 4, 4), dtype=np.uint8) for s in seeds])


def _sample(out, n, fail_at=None):
    sampling.sample_to_npy(lambda seeds: images_of(seeds, fail_at), out, n, 2, (2, 4, 4), batch_size=3,
                           progress=False)


def _match(synthetic, training, out):
    rank, world = parallel.rank_world()
    assert world == 2
    res = correlation.match_groups(synthetic, training, {"a": [0], "all": None}, k=3, progress=False)
    if rank == 0:
        np.savez(out, **{f"{name}_{field}": getattr(r, field) for name, r in res.items()
                         for field in ("index", "correlation", "constant")})


def test_outside_a_job_it_is_one_process():
    assert parallel.rank_world() == (0, 1)
    assert parallel.gather({"x": 1}) == [{"x": 1}]
    assert parallel.share(7) == range(7)


def test_sampling_over_two_processes_equals_one_process(tmp_path):
    _sample(tmp_path / "one.npy", 20)
    run_ranks(tmp_path, 2, _sample, tmp_path / "two.npy", 20)
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))
    assert (tmp_path / "one_seeds.csv").read_text() == (tmp_path / "two_seeds.csv").read_text()
    assert not list(tmp_path.glob("two.partial*"))


def test_a_stopped_multi_process_sampling_run_resumes_with_any_number_of_processes(tmp_path):
    _sample(tmp_path / "one.npy", 20)
    # seed 18: batch 5, rank 1's; whichever rank's error spawn reports first (rank 0 then
    # loses its peer at the barrier)
    with pytest.raises((mp.ProcessRaisedException, mp.ProcessExitedException)):
        run_ranks(tmp_path, 2, _sample, tmp_path / "two.npy", 20, 18)
    flags = np.load(tmp_path / "two.partial.done.npy")
    assert flags[5] == 0 and not (tmp_path / "two.npy").exists(), "no half-written result"
    _sample(tmp_path / "two.npy", 20)  # resumed by one process
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy"))


def test_correlation_over_two_processes_equals_one_process_ties_included(tmp_path):
    rng = np.random.default_rng(3)
    training = rng.integers(0, 256, (40, 2, 6, 6), dtype=np.uint8)
    training[7] = training[21]  # exact ties: the lower index must win in every process layout
    training[30] = training[21]
    synthetic = rng.integers(0, 256, (25, 2, 6, 6), dtype=np.uint8)
    synthetic[:5] = training[[21, 3, 9, 30, 7]]
    synthetic[10] = 17  # a constant image
    one = correlation.match_groups(synthetic, training, {"a": [0], "all": None}, k=3, progress=False)
    run_ranks(tmp_path, 2, _match, synthetic, training, tmp_path / "two.npz")
    two = np.load(tmp_path / "two.npz")
    for name, r in one.items():
        np.testing.assert_array_equal(two[f"{name}_index"], r.index)
        np.testing.assert_array_equal(two[f"{name}_correlation"], r.correlation)
        np.testing.assert_array_equal(two[f"{name}_constant"], r.constant)
    assert one["all"].best_index[0] == 7  # of the three identical training images, the lowest index


def test_a_failed_rank_is_named_with_its_log(tmp_path):
    with pytest.raises(steps.DistributedError,
                       match=r"sample: rank \d failed: .*no_such_setting.*\(log: .*stderr.log\)"):
        steps.launch("sample", tmp_path, {"no_such_setting": 1}, 2, tmp_path / "logs")


def test_processes_the_batch_cannot_take_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="batch_size=30 is not divisible by processes=4"):
        parallel.check_processes(4, batch_size=30)
    with pytest.raises(ValueError, match="processes must be ≥ 1"):
        parallel.check_processes(0)


def test_the_audit_over_two_processes_writes_what_one_process_writes(tmp_path):
    """Step 05 as a torchrun job: every rank audits, rank 0 writes, the notebook loads the files."""
    import pandas as pd

    from helpers import audit, common, config

    rng = np.random.default_rng(3)
    train, test = rng.integers(0, 256, (12, 2, 8, 8), dtype=np.uint8), rng.integers(0, 256, (5, 2, 8, 8), dtype=np.uint8)
    runs = {}
    for name in ("one", "two"):
        run = tmp_path / name
        (run / "data").mkdir(parents=True)
        (run / "samples").mkdir()
        np.save(run / "data" / "train.npy", train)
        np.save(run / "data" / "test.npy", test)
        for split, n in (("train", 12), ("test", 5)):
            common.write_csv(run / "data" / f"{split}.csv",
                             pd.DataFrame({"index": range(n), "subject": [f"{split}{i // 3}" for i in range(n)],
                                           "slice": [i % 3 for i in range(n)]}))
        common.write_json(run / "data" / "meta.json", {"dataset": "toy", "channels": ["t1", "t2"], "image_size": 8})
        np.save(run / "samples" / "diffusion.npy", np.concatenate([train[:3], train[3:9] // 2 + 60]))
        common.write_csv(run / "samples" / "diffusion_seeds.csv", pd.DataFrame({"index": range(9), "seed": range(9)}))
        runs[name] = run
    cfg = config.CorrelateSettings(models=["diffusion"], n_control=4, top_k=2, backend="numpy")
    one = steps.audit_every_run(runs["one"], cfg)["all"]
    two = steps.audit_every_run(runs["two"], config.CorrelateSettings(**{**config.as_dict(cfg), "processes": 2}))["all"]
    assert sorted(p.relative_to(runs["two"]) for p in two.written) == \
        sorted(p.relative_to(runs["one"]) for p in set(one.written))
    for path in one.written:
        if path.suffix == ".csv":
            pd.testing.assert_frame_equal(pd.read_csv(path), pd.read_csv(runs["two"] / path.relative_to(runs["one"])))
    assert two.thresholds == one.thresholds and "baseline_p99" in one.thresholds["all"]
    assert two.models == one.models == ["diffusion"]
    pd.testing.assert_frame_equal(two.overview(), one.overview(), check_dtype=False)
    loaded = audit.load_audit(runs["one"])  # and read back in one process: the same tables
    pd.testing.assert_frame_equal(loaded.exceedance_frame(), one.exceedance_frame(), check_dtype=False)
    assert loaded.summary == common.read_json(runs["one"] / "correlation" / "summary.json")


def _pid_and_threads(x):
    import torch

    return x, os.getpid(), torch.get_num_threads()


def test_runs_side_by_side_in_worker_processes_of_one_thread():
    out = parallel.run_side_by_side(_pid_and_threads, [(1,), (2,), (3,)], workers=2)
    assert [x for x, _, _ in out] == [1, 2, 3]
    assert all(pid != os.getpid() and threads == 1 for _, pid, threads in out)
    assert parallel.run_side_by_side(_pid_and_threads, [(1,)], workers=2)[0][1] == os.getpid()


def _fail_on_two(x):
    if x == 2:
        raise ValueError("run 2 broke")
    return x


def test_a_failed_run_is_raised_after_the_others_finished():
    with pytest.raises(ValueError, match="run 2 broke"):
        parallel.run_side_by_side(_fail_on_two, [(1,), (2,), (3,)], workers=2)
