"""Benchmark of the all-pairs correlation engine (not a test).

On the same data, in one run, reports pairs per second and effective
GFLOP/s (2·D flops per pair) for:

1. this engine, end to end (loading the .npy files, centring, products,
   exact re-scoring) on the CPU — and on the GPU when CuPy finds one;
2. the authors' method (per pair: read both PNG files, ``scipy.stats.pearsonr``)
   on a small subset;
3. FAISS exact inner-product search (``IndexFlatIP``) on the same
   normalised float32 vectors (needs ``faiss-cpu``);
4. one plain float32 matrix product of the same shapes (the BLAS limit;
   with a GPU also a CuPy/cuBLAS float32 product);

then the ratios, and checks the engine's answers against float64.

    python benchmarks/bench_correlation.py                 # 2000 × 8000 at 256×256
    python benchmarks/bench_correlation.py --size 64 --n-synthetic 500 --n-train 2000

``--mode modalities`` measures instead what step 05 pays for correlating
one modality at a time: on the same n × C × size² vs m × C × size² uint8
images (defaults 256 × 1024, C = 5, 128²; ~10 s), one joint pass (all
channels as one vector) against one per-modality pass (C groups of one
channel each, :func:`helpers.correlation.match_groups`: the training set
is streamed once), timed in alternating rounds, best of ``--repeats``; it
prints the ratio (goal <= 1.2) and checks the per-modality answers against
separate single-channel runs.

    python benchmarks/bench_correlation.py --mode modalities
    python benchmarks/bench_correlation.py --mode modalities --size 256 --n-synthetic 1000 --n-train 4000

In both modes the engine runs uint8 images on the integer path (int8
products, :mod:`helpers.correlation.integer`) and on the float path, each
timed and checked against the other.

``--mode audit`` measures the issue-20 goal: the audit command end to end
(``python -m helpers.audit``: process start, loading, the measure, the
tables and summary.json written) on ``--n-synthetic`` × ``--n-train`` uint8
images of ``--size``² (defaults 3000 × 12000 at 256², one channel), against
a plain NumPy float32 matrix product of the same normalised images (inputs
ready in memory), each in a fresh process restricted to 1 and to 2 cores
(``--threads``); the command runs on the path its probe picks (the integer
path where the CPU has fast int8 units) and, for comparison, forced onto
the float path. Ratio goal >= 5.

    python benchmarks/bench_correlation.py --mode audit
    python benchmarks/bench_correlation.py --mode audit --n-synthetic 300 --n-train 1200 --size 128
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from helpers import correlation


def make_images(n: int, size: int, rng: np.random.Generator, block: int = 16) -> np.ndarray:
    """Brain-slice-like uint8 images: a smooth random field inside a disc,
    plus pixel noise (cheap to make at 10⁴ × 256²)."""
    cells = max(2, size // block)
    out = np.empty((n, 1, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.42 * size) ** 2
    rep = -(-size // cells)
    for lo in range(0, n, 256):
        hi = min(lo + 256, n)
        low = rng.integers(40, 256, (hi - lo, cells, cells)).astype(np.int16)
        field = np.repeat(np.repeat(low, rep, axis=1), rep, axis=2)[:, :size, :size]
        noise = rng.integers(-12, 13, field.shape, dtype=np.int16)
        out[lo:hi, 0] = np.clip((field + noise) * disc, 0, 255).astype(np.uint8)
    return out


def normalised(images: np.ndarray) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def authors_loop(syn_files, train_files) -> tuple[float, int, np.ndarray]:
    """The authors' method: for each pair re-read both images, pearsonr."""
    from PIL import Image
    from scipy.stats import pearsonr

    t0 = time.perf_counter()
    best = np.full(len(syn_files), -np.inf)
    for i, s in enumerate(syn_files):
        for t in train_files:
            a = np.asarray(Image.open(s), dtype=np.float64).ravel()
            b = np.asarray(Image.open(t), dtype=np.float64).ravel()
            best[i] = max(best[i], pearsonr(a, b)[0])
    return time.perf_counter() - t0, len(syn_files) * len(train_files), best


def modalities(args) -> int:
    """One joint pass vs one per-modality pass of the same images."""
    ns, nt, size, c = args.n_synthetic, args.n_train, args.size, args.channels
    rng = np.random.default_rng(args.seed)
    train = make_images(nt * c, size, rng).reshape(nt, c, size, size)
    synthetic = make_images(ns * c, size, rng).reshape(ns, c, size, size)
    planted = rng.choice(nt, size=min(ns, 20), replace=False)
    synthetic[: len(planted)] = train[planted]
    budget = int(args.memory_gb * 1024**3)
    backend = "numpy" if args.no_gpu else "auto"
    groups = {f"ch{i}": i for i in range(c)}
    print(f"data: {ns} synthetic × {nt} training images, {c}×{size}×{size} uint8; {os.cpu_count()} CPU(s); "
          f"load average {os.getloadavg()[0]:.2f}; backend {correlation.get_backend(backend).name}", flush=True)
    per = f"per modality ({c} groups, 1 pass)"
    methods = {
        "joint (all channels, 1 group)": lambda: correlation.match_groups(
            synthetic, train, {"all": None}, k=args.k, backend=backend, memory_budget=budget, progress=False,
            arithmetic="float"),
        per: lambda: correlation.match_groups(
            synthetic, train, groups, k=args.k, backend=backend, memory_budget=budget, progress=False,
            arithmetic="float"),
        f"{per}, integer path": lambda: correlation.match_groups(
            synthetic, train, groups, k=args.k, backend=backend, memory_budget=budget, progress=False,
            arithmetic="integer"),
    }
    best = {name: float("inf") for name in methods}
    outs = {}
    for rnd in range(args.repeats):
        for name, fn in (methods.items() if rnd % 2 == 0 else reversed(methods.items())):
            t0 = time.perf_counter()
            outs[name] = fn()
            seconds = time.perf_counter() - t0
            best[name] = min(best[name], seconds)
            gc.collect()
            print(f"  round {rnd + 1}: {name:34s} {seconds:8.3f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
    joint, split, integer = (best[name] for name in methods)
    flops = 2 * ns * nt * c * size * size
    print(f"\n{'method':36s} {'seconds':>9s} {'GFLOP/s':>9s}")
    for name, seconds in best.items():
        print(f"{name:36s} {seconds:9.3f} {flops / seconds / 1e9:9.2f}")
    ratio = split / joint
    print(f"\nper-modality / joint time: {ratio:.3f}   (goal <= 1.2; best of {args.repeats} alternating rounds)")
    print(f"per-modality, integer / float path time: {integer / split:.3f}   (goal <= 1)")
    # the per-modality answers equal separate single-channel runs
    flt, itg = outs[per], outs[f"{per}, integer path"]
    same = all(np.array_equal(flt[f"ch{i}"].index, correlation.top_matches(
        synthetic, train, k=args.k, channels=i, backend=backend, progress=False, arithmetic="float").index)
        for i in range(min(c, 2)))
    same_int = all(np.array_equal(flt[g].index, itg[g].index) and np.array_equal(flt[g].correlation, itg[g].correlation)
                   for g in groups)
    found = all(np.array_equal(flt[f"ch{i}"].best_index[: len(planted)], planted) for i in range(c))
    print(f"check: per-modality = separate single-channel runs {same}; planted copies found in every channel {found}; "
          f"integer path = float path (indices and values, bitwise) {same_int}")
    if args.json:
        args.json.write_text(json.dumps({"mode": "modalities", "seconds": best, "ratio": ratio,
                                         "integer_over_float": integer / split, "same": same, "same_int": same_int,
                                         "found": found, "n_synthetic": ns, "n_train": nt, "channels": c,
                                         "size": size}, indent=2))
    return 0


def cpu_flags() -> dict:
    """The CPU's int8 units (AMX, VNNI) and its model, from /proc/cpuinfo."""
    info = {"model": "", "flags": set()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not info["model"]:
                    info["model"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not info["flags"]:
                    info["flags"] = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512f")
    return {"model": info["model"], "cores": len(os.sched_getaffinity(0)),
            **{flag: flag in info["flags"] for flag in wanted}}


def _in_child(cmd: list[str], threads: int, env: dict | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of ``cmd`` in a fresh process restricted to
    ``threads`` cores (affinity and the BLAS/OpenMP thread variables)."""
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    child_env = {**os.environ, **(env or {})}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        child_env[var] = str(threads)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=child_env, capture_output=True, text=True,
                          preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def matmul_child(args) -> int:
    """The baseline in its own process: a plain float32 product of the
    normalised images, inputs ready in memory (best of --repeats calls)."""
    xs, xt = (normalised(np.load(f)) for f in args.files)
    seconds, _ = timed(lambda: xs @ xt.T, args.repeats or 2)
    print(json.dumps({"seconds": seconds}))
    return 0


def audit(args) -> int:
    """The audit command end to end vs a plain float32 product, per core count."""
    ns, nt, size = args.n_synthetic, args.n_train, args.size
    cpu = cpu_flags()
    rng = np.random.default_rng(args.seed)
    print(f"data: {ns} synthetic × {nt} training images, 1×{size}×{size} uint8; {cpu['model']}, {cpu['cores']} "
          f"core(s) here; AMX int8 {cpu['amx_int8']}, AVX-512 VNNI {cpu['avx512_vnni']}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    train = make_images(nt, size, rng)
    synthetic = make_images(ns, size, rng)
    planted = rng.choice(nt, size=min(ns, 50), replace=False)
    synthetic[: len(planted)] = train[planted]
    with tempfile.TemporaryDirectory(prefix="bench_audit_") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        files = [work / "synthetic.npy", work / "train.npy"]
        np.save(files[0], synthetic)
        np.save(files[1], train)
        del train, synthetic
        gc.collect()
        audit_cmd = [sys.executable, "-m", "helpers.audit", "--synthetic", str(files[0]), "--training",
                     str(files[1]), "--quiet", "--backend", "numpy", "--out"]
        methods = {"numpy float32 matmul": None, "audit command (auto)": {}}
        if not args.no_float_audit:
            methods["audit command (float path)"] = {"HELPERS_CORRELATION_ARITHMETIC": "float"}
        report = {"cpu": cpu, "n_synthetic": ns, "n_train": nt, "size": size, "threads": {}}
        for threads in args.threads:
            best = {name: float("inf") for name in methods}
            summary = None
            for rnd in range(args.repeats):
                for name, env in methods.items():
                    if env is None:
                        _, out = _in_child([sys.executable, __file__, "--mode", "matmul-child", "--files",
                                            *map(str, files), "--repeats", "1" if rnd else "2"], threads)
                        seconds = json.loads(out.strip().splitlines()[-1])["seconds"]
                    else:
                        out_dir = work / f"audit_{threads}_{len(env)}"
                        seconds, _ = _in_child(audit_cmd + [str(out_dir)], threads, env)
                        if not env:
                            summary = json.loads((out_dir / "summary.json").read_text())
                            found = pd_found(out_dir, planted)
                    best[name] = min(best[name], seconds)
                    print(f"  {threads} core(s), round {rnd + 1}: {name:28s} {seconds:8.2f} s  "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
            run = next(iter(summary["runs"].values()))
            measure = next(iter(run["by_measure"].values()))
            rec = {"seconds": best, "pairs_per_s": {n: ns * nt / t for n, t in best.items()},
                   "ratio_auto": best["numpy float32 matmul"] / best["audit command (auto)"],
                   "arithmetic": measure["arithmetic"], "reason": measure["arithmetic_reason"],
                   "engine_seconds": summary["seconds"], "planted_found": found}
            if "audit command (float path)" in best:
                rec["ratio_float"] = best["numpy float32 matmul"] / best["audit command (float path)"]
            report["threads"][threads] = rec
    print(f"\n{'cores':>5s} {'method':30s} {'seconds':>9s} {'pairs/s':>12s}")
    for threads, rec in report["threads"].items():
        for name, seconds in rec["seconds"].items():
            print(f"{threads:5d} {name:30s} {seconds:9.2f} {rec['pairs_per_s'][name]:12.4g}")
    print()
    for threads, rec in report["threads"].items():
        extra = f", float path {rec['ratio_float']:.2f}×" if "ratio_float" in rec else ""
        print(f"{threads} core(s): audit command (auto: {rec['arithmetic']}) / numpy float32 matmul = "
              f"{rec['ratio_auto']:.2f}× (goal >= 5){extra}; engine {rec['engine_seconds']:.2f} s of the command; "
              f"planted copies found {rec['planted_found']:.0%}")
        print(f"    why: {rec['reason']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


def pd_found(out_dir: Path, planted: np.ndarray) -> float:
    """Share of the planted copies the audit matched to their source image."""
    import pandas as pd

    table = pd.read_csv(next(out_dir.glob("*/matches_synthetic.csv")))
    best = table.set_index("synthetic_index")["train_index"]
    return float(np.mean(best.loc[np.arange(len(planted))].to_numpy() == planted))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["engine", "modalities", "audit", "matmul-child"], default="engine",
                    help="engine: the engine vs the authors, FAISS and a plain product (default); "
                         "modalities: one joint pass vs one per-modality pass; audit: the audit command end to "
                         "end vs a plain product, 1 and 2 cores")
    ap.add_argument("--n-synthetic", type=int, help="default 2000 (engine) / 256 (modalities) / 3000 (audit)")
    ap.add_argument("--n-train", type=int, help="default 8000 (engine) / 1024 (modalities) / 12000 (audit)")
    ap.add_argument("--size", type=int, help="image side; default 256 (engine, audit) / 128 (modalities)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="audit mode: cores per process")
    ap.add_argument("--no-float-audit", action="store_true", help="audit mode: skip the float-path audit")
    ap.add_argument("--workdir", type=Path, help="audit mode: where the images and outputs go (default: a temp dir)")
    ap.add_argument("--files", type=Path, nargs=2, help=argparse.SUPPRESS)  # matmul-child: synthetic, training
    ap.add_argument("--channels", type=int, default=5, help="modalities mode: channels per image")
    ap.add_argument("--k", type=int, default=5, help="modalities mode: matches kept (step 05 keeps 5)")
    ap.add_argument("--authors-synthetic", type=int, default=6, help="subset for the authors' loop")
    ap.add_argument("--authors-train", type=int, default=100)
    ap.add_argument("--memory-gb", type=float, default=2.0, help="the engine's memory budget")
    ap.add_argument("--repeats", type=int, help="interleaved rounds; each method keeps its best "
                                                 "(default 2 / 3)")
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--no-gpu", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.mode == "matmul-child":
        return matmul_child(args)
    defaults = {"engine": (2000, 8000, 256, 2), "modalities": (256, 1024, 128, 3),
                "audit": (3000, 12000, 256, 2)}[args.mode]
    for name, value in zip(("n_synthetic", "n_train", "size", "repeats"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.mode == "modalities":
        return modalities(args)
    if args.mode == "audit":
        return audit(args)

    ns, nt, size = args.n_synthetic, args.n_train, args.size
    dim = size * size
    flops_per_pair = 2 * dim
    rng = np.random.default_rng(args.seed)
    rows: list[dict] = []

    def row(name, seconds, pairs, note=""):
        rows.append({"method": name, "seconds": seconds, "pairs": pairs, "pairs_per_s": pairs / seconds,
                     "gflops": pairs * flops_per_pair / seconds / 1e9, "note": note})

    print(f"data: {ns} synthetic × {nt} training images, 1×{size}×{size} uint8 (D = {dim}); "
          f"{os.cpu_count()} CPU(s); load average {os.getloadavg()[0]:.2f}", flush=True)
    train = make_images(nt, size, rng)
    synthetic = make_images(ns, size, rng)
    planted = rng.choice(nt, size=min(ns, 50), replace=False)
    synthetic[: len(planted)] = train[planted]  # exact copies: a check that the engine finds them

    with tempfile.TemporaryDirectory(prefix="bench_corr_") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "train.npy", train)
        np.save(tmp / "synthetic.npy", synthetic)

        # Rows 1, 3 and 4 are timed in interleaved rounds (matmul, FAISS,
        # engine, matmul, ...) and each keeps its best round: on a shared
        # machine a load spike then hurts no method more than the others.
        xs, xt = normalised(synthetic), normalised(train)
        budget = int(args.memory_gb * 1024**3)
        methods = {"numpy float32 matmul": lambda: xs @ xt.T}
        notes = {"numpy float32 matmul": "one call, inputs ready in float32"}
        if not args.no_faiss:
            try:
                import faiss
            except ImportError:
                print("faiss-cpu is not installed: skipping FAISS")
            else:
                def run_faiss():
                    index = faiss.IndexFlatIP(dim)
                    index.add(xt)
                    return index.search(xs, 1)

                methods["faiss IndexFlatIP"] = run_faiss
                notes["faiss IndexFlatIP"] = f"add + search k=1, {faiss.omp_get_max_threads()} threads"
        methods["engine (numpy, end to end)"] = lambda: correlation.top_matches(
            tmp / "synthetic.npy", tmp / "train.npy", k=1, backend="numpy", memory_budget=budget, progress=False,
            arithmetic="float")
        methods["engine (numpy, integer path)"] = lambda: correlation.top_matches(
            tmp / "synthetic.npy", tmp / "train.npy", k=1, backend="numpy", memory_budget=budget, progress=False,
            arithmetic="integer")
        best = {name: float("inf") for name in methods}
        for rnd in range(args.repeats):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                out = fn()
                seconds = time.perf_counter() - t0
                best[name] = min(best[name], seconds)
                if name == "engine (numpy, end to end)":
                    res = out
                elif name == "engine (numpy, integer path)":
                    res_int = out
                del out
                gc.collect()
                print(f"  round {rnd + 1}: {name:28s} {seconds:8.2f} s  (load {os.getloadavg()[0]:.1f})", flush=True)
        notes["engine (numpy, integer path)"] = f"{res_int.stats['arithmetic_reason']}; plan {res_int.stats['plan']}"
        for name in methods:
            note = notes.get(name, f"rescored {res.stats['rescored_pairs']} pairs, plan {res.stats['plan']}")
            row(name, best[name], ns * nt, note + f"; best of {args.repeats}")
        same_int = bool(np.array_equal(res_int.index, res.index) and np.array_equal(res_int.correlation,
                                                                                  res.correlation))
        print(f"integer path = float path (indices and values, bitwise): {same_int}", flush=True)
        methods.clear()  # the closures hold the float32 copies: free them before the GPU rows
        xt = None
        gc.collect()
        found = np.mean(res.best_index[: len(planted)] == planted)
        # exactness: float64 reference for a sample of rows (all training images)
        sample = np.unique(np.concatenate([np.arange(min(10, ns)), rng.choice(ns, size=min(40, ns), replace=False)]))
        xt64 = train.reshape(nt, -1).astype(np.float64)
        xt64 -= xt64.mean(axis=1, keepdims=True)
        xt64 /= np.linalg.norm(xt64, axis=1, keepdims=True)
        a64 = synthetic[sample].reshape(len(sample), -1).astype(np.float64)
        a64 -= a64.mean(axis=1, keepdims=True)
        a64 /= np.linalg.norm(a64, axis=1, keepdims=True)
        full = a64 @ xt64.T
        del xt64
        ref_idx = full.argmax(axis=1)
        max_err = float(np.abs(full.max(axis=1) - res.best_correlation[sample]).max())
        same_idx = float(np.mean(ref_idx == res.best_index[sample]))
        print(f"engine check: planted copies found {found:.0%}; {len(sample)} rows vs float64: "
              f"max |Δ max corr| = {max_err:.2e}, same best index {same_idx:.0%}", flush=True)

        # 1b. the engine on the GPU, against cuBLAS float32 of the same shapes
        gpu = None
        if not args.no_gpu:
            cupy, why = correlation.cupy_status()
            if cupy is None:
                print(f"GPU rows skipped: {why}")
            else:
                t_gpu, rg = timed(lambda: correlation.top_matches(tmp / "synthetic.npy", tmp / "train.npy", k=1,
                                                                  backend="cupy", memory_budget=budget,
                                                                  progress=False), max(2, args.repeats))
                row("engine (cupy, end to end)", t_gpu, ns * nt, "best of >= 2 (first includes CUDA start-up)")
                gpu = {"same_index": bool(np.array_equal(rg.index, res.index)),
                       "max_abs_diff": float(np.nanmax(np.abs(rg.correlation - res.correlation)))}
                # the integer path on the int8 tensor cores (torch._int_mm on CUDA; untested without a GPU)
                try:
                    t_gi, gi = timed(lambda: correlation.top_matches(
                        tmp / "synthetic.npy", tmp / "train.npy", k=1, backend="cupy", memory_budget=budget,
                        progress=False, arithmetic="integer"), max(2, args.repeats))
                except (RuntimeError, ValueError) as err:
                    print(f"GPU integer row skipped: {err}")
                else:
                    row("engine (cupy, integer path)", t_gi, ns * nt, gi.stats["arithmetic_reason"])
                    gpu["integer_same_as_numpy"] = bool(np.array_equal(gi.index, res.index)
                                                        and np.array_equal(gi.correlation, res.correlation))
                    print(f"GPU integer check: same indices and values as NumPy {gpu['integer_same_as_numpy']}")
                dxs, dxt = cupy.asarray(xs), cupy.asarray(normalised(train))

                def cublas():
                    out = dxs @ dxt.T
                    cupy.cuda.runtime.deviceSynchronize()
                    return out

                cublas()
                t_cublas, _ = timed(cublas, max(3, args.repeats))
                row("cupy float32 matmul", t_cublas, ns * nt, "data already on the device")
                del dxs, dxt
                cupy.get_default_memory_pool().free_all_blocks()
                print(f"GPU check: same indices as NumPy {gpu['same_index']}, max |Δ| {gpu['max_abs_diff']:.1e}")

        # 2. the authors' loop on a small subset, from PNG files
        from PIL import Image

        sub_s, sub_t = min(args.authors_synthetic, ns), min(args.authors_train, nt)
        files = {}
        for name, arr, n in (("s", synthetic, sub_s), ("t", train, sub_t)):
            files[name] = []
            for i in range(n):
                path = tmp / f"{name}_{i:05d}.png"
                Image.fromarray(arr[i, 0]).save(path)
                files[name].append(path)
        t_auth, n_auth, auth_best = authors_loop(files["s"], files["t"])
        row("authors (PNG + pearsonr per pair)", t_auth, n_auth, f"{sub_s} × {sub_t} subset")
        sub = correlation.top_matches(synthetic[:sub_s], train[:sub_t], backend="numpy", progress=False)
        auth_err = float(np.abs(sub.best_correlation - auth_best).max())

    # the report
    by = {r["method"]: r for r in rows}
    eng = by["engine (numpy, end to end)"]
    print(f"\n{'method':40s} {'seconds':>9s} {'pairs':>12s} {'pairs/s':>12s} {'GFLOP/s':>9s}")
    for r in rows:
        print(f"{r['method']:40s} {r['seconds']:9.3f} {r['pairs']:12d} {r['pairs_per_s']:12.4g} {r['gflops']:9.2f}")
    ratios = {
        "engine / numpy matmul": eng["pairs_per_s"] / by["numpy float32 matmul"]["pairs_per_s"],
        "integer engine / numpy matmul": (by["engine (numpy, integer path)"]["pairs_per_s"]
                                          / by["numpy float32 matmul"]["pairs_per_s"]),
        "engine / authors": eng["pairs_per_s"] / by["authors (PNG + pearsonr per pair)"]["pairs_per_s"],
    }
    if "faiss IndexFlatIP" in by:
        ratios["engine / faiss"] = eng["pairs_per_s"] / by["faiss IndexFlatIP"]["pairs_per_s"]
    if "engine (cupy, end to end)" in by:
        ratios["engine gpu / cupy matmul"] = (by["engine (cupy, end to end)"]["pairs_per_s"]
                                              / by["cupy float32 matmul"]["pairs_per_s"])
    if "engine (cupy, integer path)" in by:
        ratios["integer engine gpu / cupy matmul"] = (by["engine (cupy, integer path)"]["pairs_per_s"]
                                                      / by["cupy float32 matmul"]["pairs_per_s"])
    goals = {"engine / numpy matmul": 0.85, "integer engine / numpy matmul": 5, "engine / faiss": 1.0,
             "engine / authors": 3000, "engine gpu / cupy matmul": 0.7, "integer engine gpu / cupy matmul": 4}
    print()
    for name, value in ratios.items():
        print(f"{name:30s} {value:10.3f}   (goal >= {goals[name]})")
    print(f"authors' loop vs engine on the subset: max |Δ max corr| = {auth_err:.1e}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "gpu_check": gpu, "cpu": cpu_flags(),
                                         "exactness": {"max_err_vs_float64": max_err, "same_index": same_idx,
                                                       "integer_same_as_float": same_int,
                                                       "planted_found": found, "authors_max_diff": auth_err},
                                         "size": size, "n_synthetic": ns, "n_train": nt}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
