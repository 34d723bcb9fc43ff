"""Array backends of the correlation engine: NumPy (CPU/BLAS) or CuPy (GPU).

One code path serves both: the engine only calls ``backend.xp``. CuPy is
optional and imported only when asked for or when ``"auto"`` finds a device.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("helpers.correlation")


@dataclass
class Backend:
    """The array module in use: ``numpy`` (CPU/BLAS) or ``cupy`` (GPU)."""

    name: str
    xp: Any
    note: str = ""

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def to_host(self, a):
        return a.get() if self.is_gpu else np.asarray(a)

    def free(self) -> None:
        """Give CuPy's cached device memory back (it competes with PyTorch)."""
        if self.is_gpu:
            self.xp.get_default_memory_pool().free_all_blocks()
            self.xp.get_default_pinned_memory_pool().free_all_blocks()


def cupy_status() -> tuple[Any, str]:
    """``(cupy module or None, reason)``: CuPy is optional."""
    try:
        import cupy  # optional dependency
    except Exception as err:  # ImportError, or a broken CUDA install
        return None, f"CuPy is not available ({type(err).__name__}: {err})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        return None, f"CuPy found no CUDA device ({type(err).__name__})"
    if n < 1:
        return None, "CuPy found no CUDA device"
    return cupy, f"CuPy {cupy.__version__} on {n} CUDA device(s)"


def get_backend(backend: str = "auto") -> Backend:
    """``"auto"`` (CuPy when a device exists, else NumPy), ``"cupy"`` or ``"numpy"``."""
    backend = (backend or "auto").lower()
    if backend not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy', not {backend!r}")
    if backend == "numpy":
        return Backend("numpy", np, "NumPy/BLAS on the CPU (requested)")
    cupy, reason = cupy_status()
    if cupy is None:
        if backend == "cupy":
            raise RuntimeError(f"backend='cupy' requested but {reason}")
        log.info("correlation engine: NumPy/BLAS on the CPU (%s)", reason)
        return Backend("numpy", np, f"NumPy/BLAS on the CPU: {reason}")
    if os.environ.get("CUPY_TF32", "0") not in ("", "0"):
        raise RuntimeError(
            "CUPY_TF32 is set: float32 products would use TF32 (10-bit mantissa) and the "
            "candidate bound would not hold; unset CUPY_TF32"
        )
    return Backend("cupy", cupy, reason)
