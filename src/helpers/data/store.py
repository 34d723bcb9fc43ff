"""The on-disk contract under ``results_dir/data/``: streaming the readers'
images into ``train.npy`` / ``test.npy`` (uint8 N×C×H×W) without holding
them in memory, and reading them back with their tables."""

from __future__ import annotations

import io
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import common
from ..layout import DataFiles, Run
from .base import DataError, DataLayoutError, PreparedUnit, ReaderPlan, Unit


class NpyAppender:
    """Append blocks of rows to a ``.npy`` file on disk, then publish it
    atomically.

    The final row count is not known before every subject is read (the
    slice rule decides), so instead of a second pass over all volumes the
    file gets a header for N=0 and rows are written sequentially; at the
    end the header is rewritten in place with the real N (NumPy pads
    headers so the first axis can grow to 21 digits without changing the
    header length) and the temporary file is renamed onto ``path``. Memory
    stays at one block; the result loads with ``np.load(..., mmap_mode="r")``."""

    def __init__(self, path: str | os.PathLike, row_shape: Sequence[int], dtype=np.uint8):
        self.path = Path(path)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.n = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.stem + ".tmp", suffix=self.path.suffix, dir=self.path.parent)
        self.tmp = Path(tmp)
        self._handle = os.fdopen(fd, "wb")
        self._header_len = len(self._header(0))
        self._handle.write(self._header(0))

    def _header(self, n: int) -> bytes:
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": (n, *self.row_shape)})
        return buffer.getvalue()

    def append(self, block: np.ndarray) -> tuple[int, int]:
        """Write ``block`` (K × row_shape); returns its (first, end) row indices."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"block of shape {block.shape} does not fit rows of shape {self.row_shape}")
        if block.size:
            self._handle.write(memoryview(block.reshape(-1)))
        start, self.n = self.n, self.n + len(block)
        return start, self.n

    def commit(self) -> Path:
        header = self._header(self.n)
        if len(header) != self._header_len:  # cannot happen with NumPy's padded headers
            raise RuntimeError(f"{self.path}: .npy header length changed ({self._header_len} → {len(header)})")
        self._handle.seek(0)
        self._handle.write(header)
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> NpyAppender:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._handle.closed:
            self.abort()


def _ordered_results(work: Callable[[Unit], PreparedUnit], units: Sequence[Unit], n_workers: int
                     ) -> Iterator[tuple[Unit, PreparedUnit | DataError]]:
    """``work(unit)`` for every unit, yielded in order; :class:`DataError`
    is returned as a value (other errors propagate). With ``n_workers`` > 1
    a thread pool reads ahead (NIfTI/JPEG decoding, zlib and NumPy release
    the GIL), at most 2 × n_workers units in flight."""

    def safe(unit: Unit) -> PreparedUnit | DataError:
        try:
            return work(unit)
        except DataError as err:
            return err

    if n_workers <= 1:
        for unit in units:
            yield unit, safe(unit)
        return
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="prepare") as pool:
        pending: deque = deque()
        it = iter(units)
        try:
            for unit in it:
                pending.append((unit, pool.submit(safe, unit)))
                if len(pending) >= 2 * n_workers:
                    head, future = pending.popleft()
                    yield head, future.result()
            while pending:
                head, future = pending.popleft()
                yield head, future.result()
        finally:
            for _, future in pending:
                future.cancel()


@dataclass
class Streamed:
    """What :func:`stream_units` wrote: the table rows per role, the slice
    rule's records, the images per subject, and the array lengths."""
    rows: dict[str, list[dict]]
    fractions: list[dict]
    done: dict[str, int]
    n_train: int
    n_test: int


def stream_units(out_dir: Path, plan: ReaderPlan, row_shape: tuple[int, ...], *, n_workers: int,
                 on_bad_subject: str, desc: str, progress: bool) -> Streamed:
    """Read every unit of ``plan`` (in order, ``n_workers`` reading ahead)
    and append its images to ``out_dir/{train,test}.npy``. A bad unit stops
    the run, or with ``on_bad_subject="skip"`` is added to ``plan.skipped``;
    layout errors always stop. Both arrays are published only when neither
    is empty, so a failed run leaves no half-written array."""
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    fractions: list[dict] = []
    done: dict[str, int] = {}
    skipped = plan.skipped
    out_dir.mkdir(parents=True, exist_ok=True)
    with NpyAppender(DataFiles(out_dir).train, row_shape) as train_npy, \
            NpyAppender(DataFiles(out_dir).test, row_shape) as test_npy:
        writers = {"train": train_npy, "test": test_npy}
        bar = common.progress(total=len(plan.units), unit=plan.bar_unit, desc=desc, disable=not progress)
        for unit, outcome in _ordered_results(plan.work, plan.units, int(n_workers)):
            bar.update(1)
            if isinstance(outcome, DataError):
                if on_bad_subject == "fail" or isinstance(outcome, DataLayoutError):
                    bar.close()
                    raise outcome
                skipped.append({"path": outcome.path, "reason": outcome.reason, "subject": unit.subject,
                                "role": unit.role})
                continue
            start, _ = writers[unit.role].append(outcome.images)
            for i, row in enumerate(outcome.rows):
                rows[unit.role].append({"index": start + i, **row, "split_rank": unit.rank})
            fractions.extend({**rec, "role": unit.role} for rec in outcome.fractions)
            plan.notes.extend(outcome.notes)
            done[unit.subject] = done.get(unit.subject, 0) + len(outcome.images)
            bar.set_postfix(train=train_npy.n, test=test_npy.n, skipped=len(skipped), refresh=False)
        bar.close()
        for role in ("train", "test"):
            if writers[role].n == 0:
                raise ValueError(f"no {role} images: {len(skipped)} inputs skipped"
                                 + (f" (first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else "")
                                 + plan.empty_hint)
        n_train, n_test = train_npy.n, test_npy.n
        train_npy.commit()
        test_npy.commit()
    return Streamed(rows, fractions, done, n_train, n_test)


def split_counts(results_dir: str | os.PathLike) -> pd.DataFrame:
    """Images and subjects per split (and per label for the x-rays), from
    the written tables: what the notebook shows as the counts table."""
    data = Run(results_dir).data
    frames = []
    for role in ("train", "test"):
        table = pd.read_csv(data.table(role), keep_default_na=False)
        by = table.groupby("label") if table["label"].astype(str).str.len().any() else [("", table)]
        for label, part in by:
            frames.append({"split": role, "label": label, "images": len(part),
                           "subjects": part["subject"].nunique()})
    return pd.DataFrame(frames)


def load_split(results_dir: str | os.PathLike, role: str = "train", mmap: bool = True) -> tuple[np.ndarray, pd.DataFrame]:
    """``data/<role>.npy`` (memory-mapped) and its table, checked to match."""
    data = Run(results_dir).data
    images = np.load(data.images(role), mmap_mode="r" if mmap else None)
    table = pd.read_csv(data.table(role), keep_default_na=False)
    if len(images) != len(table):
        raise ValueError(f"{data.folder}: {role}.npy has {len(images)} images but {role}.csv {len(table)} rows")
    return images, table
