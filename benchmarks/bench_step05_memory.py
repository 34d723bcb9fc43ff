"""Peak memory of step 05 with arrays larger than memory, at paper shapes.

Writes (once, reused) memory-mapped uint8 arrays of random images: samples
N_s×5×S² and training N_t×5×S² (default 20 000 and 30 000 of 256²: 6.6 and
9.8 GB), then runs step 05's correlation pass (``audit.run_engine``:
every per-modality measure and the joint one, as step 05 calls it for each
model) in a child process, and samples the child's memory every 0.2 s:

- ``RssAnon``: memory the process owns (arrays, buffers); what the budget
  must bound;
- ``RssFile``: pages of the memory-mapped files currently mapped: page cache
  the kernel takes back when it needs it, counted here for completeness.

A full pass at paper shapes takes hours on a small machine, so the child is
stopped after ``--minutes`` (the resident synthetic block and the streamed
training chunks are all allocated within the first training chunks; the
peak does not grow with the pass). ``--whole-step`` instead runs the whole
``audit.audit_study`` of a results folder of smaller arrays to the end
(tables, control, baseline included).

    python benchmarks/bench_step05_memory.py --folder /tmp/bench05 --minutes 6
    python benchmarks/bench_step05_memory.py --folder /tmp/bench05s --whole-step \\
        --n-samples 2000 --n-train 3000 --n-test 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

CHANNELS = ["t1", "t2", "t1ce", "flair", "seg"]


def write_array(path: Path, n: int, size: int, seed: int) -> Path:
    if path.is_file() and np.load(path, mmap_mode="r").shape == (n, 5, size, size):
        return path
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 5, size, size))
    rng = np.random.default_rng(seed)
    for lo in range(0, n, 1000):
        out[lo:lo + 1000] = rng.integers(0, 256, (min(1000, n - lo), 5, size, size), dtype=np.uint8)
    out.flush()
    del out
    return path


def make_results(folder: Path, n_samples: int, n_train: int, n_test: int, size: int) -> Path:
    import pandas as pd

    from helpers import common

    data, samples = folder / "data", folder / "samples"
    data.mkdir(parents=True, exist_ok=True)
    samples.mkdir(parents=True, exist_ok=True)
    write_array(data / "train.npy", n_train, size, 1)
    write_array(data / "test.npy", n_test, size, 2)
    write_array(samples / "diffusion.npy", n_samples, size, 3)
    for name, n in (("train", n_train), ("test", n_test)):
        pd.DataFrame({"subject": [f"s{i // 100}" for i in range(n)], "slice": [i % 100 for i in range(n)]}
                     ).to_csv(data / f"{name}.csv", index=False)
    pd.DataFrame({"seed": np.arange(n_samples) + 2}).to_csv(samples / "diffusion_seeds.csv", index=False)
    common.write_json(data / "meta.json", {"dataset": "bench", "channels": CHANNELS, "image_size": size})
    return folder


def _engine_pass(folder: str, budget_gb: float) -> None:  # the child
    from helpers import audit, correlation

    names = CHANNELS
    train = correlation.open_images(Path(folder) / "data" / "train.npy", channel_names=names)
    samples = correlation.open_images(Path(folder) / "samples" / "diffusion.npy", channel_names=names)
    measures, _ = audit.study_measures(names, None, each=True, joint=True, headline="t1ce")
    audit.run_engine(samples, train, {m.name: list(m.index) for m in measures}, k=5,
                     memory_budget_gb=budget_gb, progress=True, desc="diffusion vs train")


def _whole_step(folder: str, budget_gb: float) -> None:  # the child
    from helpers import audit, config

    cfg = config.build("correlate", {"memory_budget_gb": budget_gb, "headline_channel": "t1ce",
                                     "models": ["diffusion"], "n_control": 64})
    audit.audit_study(folder, cfg, progress=True)


def _status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/bench_step05"))
    parser.add_argument("--n-samples", type=int, default=20000)
    parser.add_argument("--n-train", type=int, default=30000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--budget-gb", type=float, default=2.0, help="correlate.memory_budget_gb")
    parser.add_argument("--minutes", type=float, default=6.0, help="stop the engine pass after this long")
    parser.add_argument("--whole-step", action="store_true", help="run audit_study to the end instead")
    args = parser.parse_args()

    t0 = time.perf_counter()
    folder = make_results(args.folder, args.n_samples, args.n_train, args.n_test, args.size)
    sizes = {p.name: p.stat().st_size for p in folder.rglob("*.npy")}
    print(f"arrays ready in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sizes.items()), flush=True)

    target = _whole_step if args.whole_step else _engine_pass
    child = mp.get_context("spawn").Process(target=target, args=(str(folder), args.budget_gb))
    start = time.perf_counter()
    child.start()
    peak: dict[str, int] = {}
    deadline = None if args.whole_step else start + 60 * args.minutes
    while child.is_alive():
        try:
            for key, value in _status(child.pid).items():
                peak[key] = max(peak.get(key, 0), value)
        except (FileNotFoundError, ProcessLookupError):
            break
        if deadline is not None and time.perf_counter() > deadline:
            child.terminate()
            break
        time.sleep(0.2)
    child.join()
    ran = time.perf_counter() - start
    gib = 2**30
    how = "to the end" if args.whole_step else f"stopped after {ran / 60:.1f} min"
    print(f"\nstep 05 {'(whole audit)' if args.whole_step else '(engine pass)'} on {args.n_samples:,} samples × "
          f"{args.n_train:,} training images of 5×{args.size}², memory_budget_gb {args.budget_gb:g}, {how} "
          f"(exit code {child.exitcode})")
    met = peak.get("RssAnon", 0) <= (args.budget_gb + 1) * gib
    print(f"peak RssAnon (owned memory) {peak.get('RssAnon', 0) / gib:.2f} GiB; "
          f"goal ≤ budget + 1 = {args.budget_gb + 1:.2f} GiB: {'met' if met else 'MISSED'}")
    print(f"peak RssFile (mapped file pages, reclaimable) {peak.get('RssFile', 0) / gib:.2f} GiB; "
          f"VmHWM (peak RSS, both) {peak.get('VmHWM', 0) / gib:.2f} GiB; "
          f"arrays on disk {sum(sizes.values()) / gib:.2f} GiB")


if __name__ == "__main__":
    main()
