"""Generate a phantom cohort once per parameter set and reuse it:
``ensure_phantom`` caches under ``data/phantom/<kind>-<hash>/`` and
regenerates only when its parameters (or ``PHANTOM_VERSION``) change, so
every notebook and test run reads the same raw files without waiting for
them. A cohort appears atomically (built aside, then renamed)."""

from __future__ import annotations

import inspect
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from .. import common
from . import brain, chest

#: Bump when the generator's output changes: cached cohorts are regenerated.
PHANTOM_VERSION = 1

KINDS: tuple[str, ...] = ("brats2021", "brats2020", "cxr")
MARKER = "phantom.json"

def _maker(kind: str):
    if kind == "cxr":
        return chest.make_cxr_cohort, {}
    return brain.make_brats_cohort, {"layout": kind.removeprefix("brats")}


def phantom_params(kind: str, seed: int = 0, **sizes) -> dict:
    """All parameters that define a cached cohort (defaults filled in), as
    plain JSON types: what ``ensure_phantom`` hashes and records."""
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {', '.join(KINDS)}")
    maker, fixed = _maker(kind)
    allowed = [name for name in inspect.signature(maker).parameters
               if name not in ("out_dir", "seed", "progress", *fixed)]
    unknown = sorted(set(sizes) - set(allowed))
    if unknown:
        raise TypeError(f"phantom {kind!r} has no parameter(s) {', '.join(unknown)}; "
                        f"allowed: {', '.join(allowed)}")
    bound = inspect.signature(maker).bind(None, seed=seed, **fixed, **sizes)
    bound.apply_defaults()
    values = {k: v for k, v in bound.arguments.items() if k not in ("out_dir", "progress")}
    return common.to_builtin({"kind": kind, "version": PHANTOM_VERSION, **values})


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def ensure_phantom(
    kind: str,
    cache_root: str | os.PathLike = "data/phantom",
    seed: int = 0,
    progress: bool = True,
    **sizes,
) -> Path:
    """The path of a phantom cohort, generated on first use and reused after.

    ``kind``: ``"brats2021"``, ``"brats2020"`` or ``"cxr"``; ``sizes``: the
    keyword arguments of ``make_brats_cohort`` (``n_subjects``, ``shape``) or
    ``make_cxr_cohort`` (``n_normal``, ``n_pneumonia``, ``splits`` ...).
    The cohort lives in ``cache_root/<kind>-<hash of all parameters>/``
    (``cache_root`` relative to the checkout's root), is generated in a
    temporary sibling folder and renamed into place, and is complete once
    its ``phantom.json`` (parameters, written last) exists. Returns what
    ``make_*_cohort`` returns inside that folder: the folder itself
    (brats2021), its ``MICCAI_BraTS2020_TrainingData`` (brats2020) or its
    ``chest_xray`` (cxr).
    """
    params = phantom_params(kind, seed=seed, **sizes)
    root = Path(cache_root)
    if not root.is_absolute():
        root = common.repo_root() / root
    final = root / f"{kind}-{common.stable_hash(params)}"
    start = time.perf_counter()
    marker = final / MARKER
    if marker.is_file():
        record = common.read_json(marker)
        if record.get("params") == params:
            print(f"phantom {kind}: reused {final / record['cohort']} "
                  f"({time.perf_counter() - start:.2f} s)")
            return final / record["cohort"]
        raise RuntimeError(f"{marker}: parameters differ from the folder's hash; remove {final}")
    if final.exists():                 # incomplete (no marker): never used, replace it
        shutil.rmtree(final)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{final.name}.tmp-*"):   # left by a crashed run
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        maker, fixed = _maker(kind)
        made = maker(tmp, seed=seed, progress=progress, **fixed, **sizes)
        seconds = time.perf_counter() - start
        cohort = made.relative_to(tmp).as_posix()
        common.write_json(tmp / MARKER, {
            "params": params, "cohort": cohort, "seconds": round(seconds, 2),
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        })
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MARKER).is_file():      # not a concurrent twin: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"phantom {kind}: generated {final / cohort} in {time.perf_counter() - start:.1f} s")
    return final / cohort


def locate_raw_data(source: str, raw_dir: str | os.PathLike | None = None, dataset: str | None = None, *,
                    phantom_kind: str = "brats2021", phantom_sizes: dict | None = None, phantom_seed: int = 0,
                    phantom_cache: str | os.PathLike = "data/phantom") -> Path:
    """The raw folder step 01 reads: for a ``phantom_*`` source without
    ``raw_dir`` the generator's cached cohort (made on first use); otherwise
    :func:`helpers.data.locate_raw_data` (``raw_dir`` checked to exist)."""
    from ..data import SOURCES
    from ..data import locate_raw_data as locate_real

    if source.startswith("phantom_") and source in SOURCES and raw_dir is None:
        kind = "cxr" if source == "phantom_cxr" else phantom_kind
        return Path(ensure_phantom(kind, cache_root=phantom_cache, seed=phantom_seed, **(phantom_sizes or {})))
    return locate_real(source, raw_dir, dataset=dataset)
