"""Which arithmetic an engine call uses: the integer path (uint8 images,
int8 products; :mod:`.integer`) or the float path (float32 products with an
exact re-score; :mod:`.search`), and why.

Chosen by measuring, never assumed: an integer unit is only faster where the
CPU has int8 instructions that beat its float32 FMAs (AMX, AVX-512 VNNI) or
on a GPU's int8 tensor cores. A short probe (one block of each path's real
update on the same random images, about half a second) times both; the
faster one runs. The probe is kept per process, and per machine in a small
JSON file (``~/.cache/helpers/correlation_probe.json``, keyed by CPU model
and flags, GPU, torch/NumPy versions and cores; ``$HELPERS_CORRELATION_PROBE_CACHE``
names another file, or none when empty), so a command-line audit does not
pay it at every start; only a clear outcome is kept there (one path at least
:data:`DECISIVE` times the other), so a probe disturbed by a busy machine is
measured again by the next process rather than remembered. ``arithmetic="integer"``/``"float"`` (or the
environment variable ``HELPERS_CORRELATION_ARITHMETIC``) forces one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .exact import _threads

ARITHMETIC_ENV = "HELPERS_CORRELATION_ARITHMETIC"
CHOICES = ("auto", "integer", "float")
PROBE_CACHE_ENV = "HELPERS_CORRELATION_PROBE_CACHE"
#: probe shapes: synthetic rows, training rows, values per image
PROBE_SHAPE = (128, 512, 8192)
#: a probe is kept per machine only when one path is this many times faster
DECISIVE = 1.5

_PROBES: dict[tuple, tuple[float, float]] = {}


@dataclass(frozen=True)
class Arithmetic:
    """The arithmetic of one engine call: ``kind`` ("integer"/"float"), a
    short ``reason`` for the report, and the integer unit when integer."""

    kind: str
    reason: str
    unit: Any = None

    @property
    def integer(self) -> bool:
        return self.kind == "integer"


def requested_arithmetic(arithmetic: str | None) -> str:
    """``arithmetic`` or, when ``None``, ``$HELPERS_CORRELATION_ARITHMETIC`` or ``"auto"``."""
    value = arithmetic if arithmetic is not None else os.environ.get(ARITHMETIC_ENV) or "auto"
    value = str(value).lower()
    if value not in CHOICES:
        where = "arithmetic" if arithmetic is not None else f"${ARITHMETIC_ENV}"
        raise ValueError(f"{where} must be one of {', '.join(CHOICES)}, not {value!r}")
    return value


def choose_arithmetic(backend, dtypes: tuple, dim: int, precision: str = "float32",
                      arithmetic: str | Arithmetic | None = None) -> Arithmetic:
    """The arithmetic for images of ``dtypes`` (synthetic, training) with
    ``dim`` values per image (the widest group) on ``backend``."""
    from .integer import MAX_INTEGER_DIM, integer_unit

    if isinstance(arithmetic, Arithmetic):  # decided by the caller (tests: a padded CPU unit)
        return arithmetic
    wanted = requested_arithmetic(arithmetic)
    if wanted == "float":
        return Arithmetic("float", "float arithmetic requested")
    why_not, error = None, ValueError  # bad input: ValueError; a missing unit: RuntimeError
    if any(np.dtype(d) != np.uint8 for d in dtypes):
        why_not = f"the images are {'/'.join(sorted({str(np.dtype(d)) for d in dtypes}))}, not uint8"
    elif precision == "float64":
        why_not = "float64 candidate products requested (precision='float64')"
    elif dim > MAX_INTEGER_DIM:
        why_not = f"images of {dim} values exceed the integer path's {MAX_INTEGER_DIM}"
    else:
        unit, why = integer_unit(backend)
        if unit is None:
            why_not, error = why, RuntimeError
    if why_not is not None:
        if wanted == "integer":
            raise error(f"arithmetic='integer' cannot run: {why_not}")
        return Arithmetic("float", f"float: {why_not}")
    if wanted == "integer":
        return Arithmetic("integer", f"integer arithmetic requested ({unit.name})", unit)
    t_int, t_float = probe(backend, unit)
    return decide(t_int, t_float, unit)


def decide(t_int: float, t_float: float, unit) -> Arithmetic:
    """The faster path of a probe (``t_int``/``t_float``: seconds of one
    block update on each path), with the measured ratio as the reason."""
    m, n, d = PROBE_SHAPE
    what = f"probe of {m}×{n} pairs of {d} values, {_threads()} core(s)"
    if t_int < t_float:
        return Arithmetic("integer", f"integer: {t_float / t_int:.1f}× the float path ({what}; {unit.name})", unit)
    return Arithmetic("float", f"float: the integer path ran at {t_float / t_int:.2f}× the float path "
                               f"({what}; {unit.name}): no faster int8 units")


def probe(backend, unit) -> tuple[float, float]:
    """Seconds of one block update on the integer and the float path (best
    of 2 after a warm-up, the same random uint8 images), cached per process
    and per machine (see the module's docstring)."""
    key = _machine_key(backend, unit)
    if key not in _PROBES:
        path = probe_cache_path()
        stored = _read_cache(path).get(key)
        if stored is None:
            stored = _measure(backend, unit)
            if max(stored[0] / stored[1], stored[1] / stored[0]) >= DECISIVE:
                _write_cache(path, key, stored)
        _PROBES[key] = (float(stored[0]), float(stored[1]))
    return _PROBES[key]


def probe_cache_path():
    """The per-machine probe file, or ``None`` when ``$HELPERS_CORRELATION_PROBE_CACHE`` is empty."""
    from pathlib import Path

    value = os.environ.get(PROBE_CACHE_ENV)
    if value is not None:
        return Path(value) if value else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "helpers" / "correlation_probe.json"


def _machine_key(backend, unit) -> str:
    """What a probe's outcome depends on: CPU model and flags (AMX, VNNI),
    the device, library versions, usable cores and torch's threads."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        cpu = "".join(sorted(set(lines)))
    except OSError:
        pass
    gpu = ""
    if unit.is_gpu:
        gpu = unit.torch.cuda.get_device_name(unit.device)
    parts = [cpu, gpu, backend.name, unit.name, np.__version__, str(PROBE_SHAPE), str(_threads()),
             str(unit.torch.get_num_threads())]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


def _read_cache(path) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent or damaged: measure again
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path, key: str, times: tuple[float, float]) -> None:
    if path is None:
        return
    try:
        data = _read_cache(path)
        data[key] = [times[0], times[1], time.strftime("%Y-%m-%d %H:%M:%S")]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only home: the per-process cache still holds
        pass


def _measure(backend, unit) -> tuple[float, float]:
    from .exact import _prepare
    from .integer import _IntMatcher, pixel_blocks, prepare_int
    from .search import _Matcher, _tolerance

    m, n, d = PROBE_SHAPE
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, d), dtype=np.uint8)
    b = rng.integers(0, 256, (n, d), dtype=np.uint8)
    xp = backend.xp
    blocks = pixel_blocks(d)
    ia, ib = prepare_int(unit, a, 0, blocks), prepare_int(unit, b, 0, blocks)
    fa, fb = _prepare(backend, a, 0, np.float32), _prepare(backend, b, 0, np.float32)
    gbuf = xp.empty(m * n, dtype=np.float32)
    stats = {"rescored_pairs": 0}
    delta = _tolerance(True, d, np.dtype(np.float32), 32.0)

    ibuf = unit.product_buffer(m, n)

    def integer():
        _IntMatcher(unit, ia, np.arange(m), 1).update(ib, ibuf)
        unit.sync()

    def floating():
        _Matcher(backend, fa, np.arange(m), 1, delta, 16, stats).update(fb, gbuf)
        if backend.is_gpu:
            xp.cuda.runtime.deviceSynchronize()

    return _best(integer), _best(floating)


def _best(fn, repeats: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
