"""GPU check of the integer path's products (not a test; run by
benchmarks/gpu_check.sh): int8 x int8 -> int32 (``torch._int_mm``, the int8
tensor cores) against a float32 product of the same shapes (cuBLAS through
CuPy, TF32 off), and the int32 results against exact integer products.

    python benchmarks/gpu_integer.py                  # 4096 × 65536 by 65536 × 4096
    python benchmarks/gpu_integer.py --m 2048 --k 65536 --n 8192 --json gpu_check/integer.json

Written without a GPU at hand (the machines of issue 20 had none): the first
run on a GPU is its test. The goal is >= 4× the float32 product, exact.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def best_of(fn, sync, repeats: int = 5) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=4096, help="synthetic rows (a multiple of 8, > 16)")
    ap.add_argument("--k", type=int, default=65536, help="values per image (256²; at most 131071 per product)")
    ap.add_argument("--n", type=int, default=4096, help="training rows (a multiple of 8)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_integer: torch sees no CUDA device")
        return 1
    from helpers.correlation import PIXEL_BLOCK_MAX

    if args.k > PIXEL_BLOCK_MAX:
        ap.error(f"--k {args.k}: one int8 product over more than {PIXEL_BLOCK_MAX} values may overflow int32")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randint(-128, 128, (args.m, args.k), dtype=torch.int8, device=dev, generator=gen)
    b = torch.randint(-128, 128, (args.n, args.k), dtype=torch.int8, device=dev, generator=gen)
    sync = torch.cuda.synchronize
    t_int = best_of(lambda: torch._int_mm(a, b.T), sync)
    ops = 2 * args.m * args.k * args.n
    rows = {"torch._int_mm int8 -> int32": t_int}
    # float32 of the same shapes: cuBLAS through CuPy (the engine's float path), else torch with TF32 off
    try:
        import cupy

        fa, fb = cupy.asarray(a.float()), cupy.asarray(b.float())
        rows["cuBLAS float32 (CuPy)"] = best_of(lambda: fa @ fb.T, cupy.cuda.runtime.deviceSynchronize)
        del fa, fb
    except ImportError:
        torch.backends.cuda.matmul.allow_tf32 = False
        fa, fb = a.float(), b.float()
        rows["cuBLAS float32 (torch, TF32 off)"] = best_of(lambda: fa @ fb.T, sync)
        del fa, fb
    # exactness: a sample of rows against int64 products on the host
    g = torch._int_mm(a, b.T)
    pick = torch.arange(0, args.m, max(1, args.m // 16), device=dev)
    exact = a[pick].cpu().numpy().astype(np.int64) @ b.cpu().numpy().astype(np.int64).T
    same = bool(np.array_equal(g[pick].cpu().numpy(), exact))
    # the bound: all -128 rows of the widest block fit int32 exactly
    w = PIXEL_BLOCK_MAX - PIXEL_BLOCK_MAX % 8
    black = torch.full((32, w), -128, dtype=torch.int8, device=dev)
    bound_ok = int(torch._int_mm(black, black[:8].T)[0, 0]) == w * 128**2
    name = torch.cuda.get_device_name(dev)
    print(f"{name}: {args.m} × {args.k} by {args.k} × {args.n}")
    for label, seconds in rows.items():
        print(f"  {label:36s} {seconds * 1e3:9.2f} ms  {ops / seconds / 1e12:8.1f} T(FL)OP/s")
    float_row = [v for k, v in rows.items() if "float32" in k][0]
    ratio = float_row / t_int
    print(f"int8 / float32 speed: {ratio:.1f}× (goal >= 4); exact on sampled rows {same}; int32 bound holds {bound_ok}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "shape": [args.m, args.k, args.n], "seconds": rows,
                                         "ratio": ratio, "exact": same, "bound_ok": bound_ok}, indent=2))
    return 0 if same and bound_ok else 1


if __name__ == "__main__":
    sys.exit(main())
