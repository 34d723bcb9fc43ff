"""Does a re-run reproduce a reference? Compare two results folders table by
table and number by number (``python -m helpers.verify RUN REFERENCE``, or
``./runall.sh … --compare-with DIR`` at the end of a run).

Every table a step writes is read and compared value by value: CSV cells
(rows named by their key columns), Markdown tables and text (line by line,
cells named by their column), JSON and YAML (by key path), NumPy arrays
(elements). Files present on one side only are listed. Images, PDFs and
checkpoints are not compared unless ``--binary`` (their bytes carry
creation dates and library versions even when the pixels agree).

What is not a result is left out: the runner's own files (executed
notebooks, logs, stamps, the landing page), timings and speeds (``seconds``,
``time_s``, ``…_per_second``) and each file's provenance (time, host,
commit; summarized once, so a reader sees that the two runs came from
different commits) and speeds a text quotes (step 05's "6.2× the float
path"). Paths that name the results folder itself are compared relative
to it.

Exit status: 0 when everything compared agrees, 1 when something differs
or a file is on one side only, 2 when a folder is missing.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .layout import RUNNER_FILES, RUNNER_FOLDERS
from .runlock import LOCK_NAME

#: files compared value by value, by suffix
TABLE_SUFFIXES = {".csv", ".md", ".json", ".yaml", ".yml", ".txt", ".npy"}
#: the runner's own files and folders (timings, logs, rendered pages), never results
SKIP_DIRS = {*RUNNER_FOLDERS, "__pycache__", ".ipynb_checkpoints"}
SKIP_NAMES = {*RUNNER_FILES, LOCK_NAME}
SKIP_SUFFIXES = {".log", ".lock", ".tmp"}
#: keys and columns that hold wall-clock time or speed, not results (names, and name endings)
VOLATILE = {"seconds", "time_s", "images_per_s", "time_utc", "finished", "started", "wall_s"}
VOLATILE_ENDINGS = ("_seconds", "_time_s", "_per_second", "_per_s")
#: speeds measured on the machine and quoted in a text (step 05's choice of arithmetic says why)
VOLATILE_TEXT = re.compile(r"\d+(?:\.\d+)?× the float path|\d[\d,]*(?:\.\d+)? pairs/s")
#: the subtree of every params.yaml that says how a file was made (time, host, commit)
PROVENANCE = "provenance"

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclass
class Difference:
    where: str       # row, key path or line
    run: str
    reference: str


@dataclass
class Comparison:
    run: Path
    reference: Path
    rtol: float = 0.0
    atol: float = 0.0
    equal: list[str] = field(default_factory=list)
    differ: dict[str, list[Difference]] = field(default_factory=dict)
    only_in_run: list[str] = field(default_factory=list)
    only_in_reference: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    provenance: dict[str, set[str]] = field(default_factory=dict)  # key -> values seen, per side

    @property
    def ok(self) -> bool:
        return not (self.differ or self.only_in_run or self.only_in_reference)

    @property
    def n_values(self) -> int:
        return sum(len(d) for d in self.differ.values())


# --------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numbers_equal(a: float, b: float, rtol: float, atol: float) -> bool:
    """Exact by default; NaN equals NaN (a missing value on both sides)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    return abs(a - b) <= atol + rtol * abs(b)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 120 else text[:117] + "…"


class _Context:
    """The two folders and the tolerance: how values are normalized and compared."""

    def __init__(self, run: Path, reference: Path, rtol: float, atol: float, ignore: Iterable[str]):
        self.rtol, self.atol = rtol, atol
        self.ignore = VOLATILE | set(ignore)
        # a path naming the results folder itself is compared relative to it
        self.prefixes = {side: sorted({str(p), str(p.resolve()), *_relative_forms(p)}, key=len, reverse=True)
                         for side, p in (("run", run), ("reference", reference))}

    def ignored(self, name: str) -> bool:
        return name in self.ignore or name.endswith(VOLATILE_ENDINGS)

    def text(self, value: str, side: str) -> str:
        for prefix in self.prefixes[side]:
            value = value.replace(prefix, "<results>")
        return VOLATILE_TEXT.sub("<measured>", value)

    def same(self, a: Any, b: Any) -> bool:
        if _is_number(a) and _is_number(b):
            return numbers_equal(float(a), float(b), self.rtol, self.atol)
        if isinstance(a, str) and isinstance(b, str):
            return self.text(a, "run") == self.text(b, "reference")
        if isinstance(a, list) and isinstance(b, list):  # a list of numbers or names (shape, channels)
            return len(a) == len(b) and all(self.same(x, y) for x, y in zip(a, b))
        return a == b

    def same_text(self, a: str, b: str) -> bool:
        """Two lines agree: equal, or equal but for numbers within the tolerance."""
        a, b = self.text(a, "run"), self.text(b, "reference")
        if a == b:
            return True
        if not (self.rtol or self.atol):
            return False
        if _NUMBER.sub("#", a) != _NUMBER.sub("#", b):
            return False
        return all(numbers_equal(float(x), float(y), self.rtol, self.atol)
                   for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b)))


def _relative_forms(path: Path) -> list[str]:
    """``results/phantom`` for a folder inside the checkout (how notebooks
    name it), besides the absolute path."""
    out = []
    try:
        from .common import repo_root

        out.append(str(path.resolve().relative_to(repo_root())))
    except (ValueError, FileNotFoundError):
        pass
    return [p for p in out if p not in (".", "")]


# --------------------------------------------------------------------------
# One file of each kind
# --------------------------------------------------------------------------

def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(obj, list) and any(isinstance(v, (Mapping, list)) for v in obj):
        out = {}
        for i, value in enumerate(obj):
            out.update(_flatten(value, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: obj}


def _compare_tree(run: Any, ref: Any, ctx: _Context, provenance: dict[str, set[str]]) -> list[Difference]:
    a, b = _flatten(run), _flatten(ref)
    out = []
    for key in sorted(set(a) | set(b)):
        leaf = re.split(r"[.\[]", key)[-1].rstrip("]")
        if key.split(".")[0] == PROVENANCE:
            for side, tree in (("run", a), ("reference", b)):
                if key in tree:
                    provenance.setdefault(f"{side}: {leaf}", set()).add(str(tree[key]))
            continue
        if ctx.ignored(leaf):
            continue
        if key not in a:
            out.append(Difference(key, "(missing)", _fmt(b[key])))
        elif key not in b:
            out.append(Difference(key, _fmt(a[key]), "(missing)"))
        elif not ctx.same(a[key], b[key]):
            out.append(Difference(key, _fmt(a[key]), _fmt(b[key])))
    return out


_KEY_COLUMN = re.compile(r"(^|_)(size|step|rank|index|seed|subject|slice)$")


def _row_label(frame, i: int, keys: list[str]) -> str:
    if not keys:
        return f"row {i + 1}"
    values = ", ".join(f"{k}={frame[k].iloc[i]}" for k in keys)
    return f"row {i + 1} ({values})"


def _compare_csv(run: Path, ref: Path, ctx: _Context) -> list[Difference]:
    import pandas as pd

    a, b = pd.read_csv(run), pd.read_csv(ref)
    out = []
    if list(a.columns) != list(b.columns):
        out.append(Difference("columns", ", ".join(map(str, a.columns)), ", ".join(map(str, b.columns))))
    if len(a) != len(b):
        out.append(Difference("rows", str(len(a)), str(len(b))))
    columns = [c for c in b.columns if c in set(a.columns) and not ctx.ignored(str(c))]
    keys = [c for c in columns if not pd.api.types.is_numeric_dtype(b[c]) or _KEY_COLUMN.search(str(c))][:5]
    n = min(len(a), len(b))
    cells = []  # (row, column) of every differing cell, found a column at a time
    for c in columns:
        x, y = a[c].iloc[:n], b[c].iloc[:n]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y) \
                and not pd.api.types.is_bool_dtype(x) and not pd.api.types.is_bool_dtype(y):
            xf, yf = x.to_numpy(float), y.to_numpy(float)
            with np.errstate(invalid="ignore"):
                same = (xf == yf) | (np.isnan(xf) & np.isnan(yf)) | \
                    (np.abs(xf - yf) <= ctx.atol + ctx.rtol * np.abs(yf))
        else:
            xs = [ctx.text(str(v), "run") for v in x]
            ys = [ctx.text(str(v), "reference") for v in y]
            same = np.array([u == v or ctx.same_text(u, v) for u, v in zip(xs, ys)], dtype=bool)
        cells += [(int(i), c) for i in np.flatnonzero(~same)]
    order = {c: j for j, c in enumerate(columns)}
    for i, c in sorted(cells, key=lambda rc: (rc[0], order[rc[1]])):
        x, y = a[c].iloc[i], b[c].iloc[i]
        x = x.item() if hasattr(x, "item") else x
        y = y.item() if hasattr(y, "item") else y
        out.append(Difference(f"{_row_label(b, i, keys)} {c}", _fmt(x), _fmt(y)))
    return out


def _cells(line: str) -> list[str] | None:
    s = line.strip()
    if not (s.startswith("|") and s.endswith("|")):
        return None
    return [c.strip() for c in s[1:-1].split("|")]


def _compare_text(run: Path, ref: Path, ctx: _Context) -> list[Difference]:
    """Line by line (Markdown tables cell by cell, named by row and column)."""
    a, b = run.read_text().splitlines(), ref.read_text().splitlines()
    out = []
    header_for = {}  # reference line number -> the header cells of its table
    header = None
    for j, line in enumerate(b):
        cells = _cells(line)
        if cells is None:
            header = None
        elif header is None:
            header = cells
        header_for[j] = header
    matcher = difflib.SequenceMatcher(a=[ctx.text(x, "run") for x in a], b=[ctx.text(x, "reference") for x in b],
                                      autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        pairs = list(zip(range(i1, i2), range(j1, j2)))
        for i, j in pairs:
            if ctx.same_text(a[i], b[j]):
                continue
            ca, cb, head = _cells(a[i]), _cells(b[j]), header_for.get(j)
            if ca is not None and cb is not None and len(ca) == len(cb) and head and len(head) == len(cb):
                for name, x, y in zip(head, ca, cb):
                    if not ctx.same_text(x, y):
                        out.append(Difference(f"line {j + 1} ({cb[0]}) {name}", x, y))
            else:
                out.append(Difference(f"line {j + 1}", _fmt(a[i]), _fmt(b[j])))
        for i in range(i1 + len(pairs), i2):
            out.append(Difference(f"line {i + 1} of the run", _fmt(a[i]), "(missing)"))
        for j in range(j1 + len(pairs), j2):
            out.append(Difference(f"line {j + 1}", "(missing)", _fmt(b[j])))
    return out


def _compare_npy(run: Path, ref: Path, ctx: _Context) -> list[Difference]:
    a, b = np.load(run, allow_pickle=False), np.load(ref, allow_pickle=False)
    if a.shape != b.shape or a.dtype != b.dtype:
        return [Difference("shape, dtype", f"{a.shape} {a.dtype}", f"{b.shape} {b.dtype}")]
    if a.dtype.kind in "fiub":
        x, y = a.astype(np.float64), b.astype(np.float64)
        close = np.isclose(x, y, rtol=ctx.rtol, atol=ctx.atol, equal_nan=True) | (x == y)
    else:
        close = a == b
    n = int((~close).sum())
    if not n:
        return []
    first = np.unravel_index(int(np.argmax(~close)), a.shape)
    detail = f"{n} of {a.size} elements differ"
    if a.dtype.kind in "fiub":
        detail += f"; largest difference {float(np.max(np.abs(x - y)[~close])):.6g}"
    return [Difference(f"elements ({detail}; first at {tuple(int(i) for i in first)})",
                       _fmt(a[first].item()), _fmt(b[first].item()))]


def _compare_bytes(run: Path, ref: Path) -> list[Difference]:
    da, db = (hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (run, ref))
    return [] if da == db else [Difference("bytes (sha256)", da, db)]


def compare_file(run: Path, ref: Path, ctx: _Context, provenance: dict[str, set[str]],
                 binary: bool = False) -> list[Difference] | None:
    """The differences between two files of the same name; None when the
    file's kind is not compared."""
    suffix = ref.suffix.lower()
    try:
        if suffix == ".csv":
            return _compare_csv(run, ref, ctx)
        if suffix == ".npy":
            return _compare_npy(run, ref, ctx)
        if suffix == ".json":
            return _compare_tree(json.loads(run.read_text()), json.loads(ref.read_text()), ctx, provenance)
        if suffix in (".yaml", ".yml"):
            import yaml

            return _compare_tree(yaml.safe_load(run.read_text()), yaml.safe_load(ref.read_text()), ctx, provenance)
        if suffix in (".md", ".txt"):
            return _compare_text(run, ref, ctx)
    except (ValueError, UnicodeDecodeError, OSError) as err:  # unreadable on one side: say so, as a difference
        return [Difference("could not be read", f"{type(err).__name__}: {err}", "")]
    return _compare_bytes(run, ref) if binary else None


# --------------------------------------------------------------------------
# Two folders
# --------------------------------------------------------------------------

def result_files(folder: Path) -> set[str]:
    """Every file under ``folder`` that a step wrote (relative paths)."""
    out = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if (not path.is_file() or any(part in SKIP_DIRS for part in rel.parts[:-1])
                or rel.name in SKIP_NAMES or path.suffix in SKIP_SUFFIXES or ".running." in rel.name
                or ".failed." in rel.name):
            continue
        out.add(rel.as_posix())
    return out


def compare(run: str | Path, reference: str | Path, rtol: float = 0.0, atol: float = 0.0,
            ignore: Iterable[str] = (), binary: bool = False) -> Comparison:
    """Compare a re-run's results folder with a reference one (see module doc)."""
    run, reference = Path(run), Path(reference)
    for name, folder in (("run", run), ("reference", reference)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder {folder} does not exist (expected a results folder, "
                                    "e.g. results/phantom)")
    ctx = _Context(run, reference, rtol, atol, ignore)
    result = Comparison(run, reference, rtol, atol)
    a, b = result_files(run), result_files(reference)
    result.only_in_run = sorted(a - b)
    result.only_in_reference = sorted(b - a)
    for rel in sorted(a & b):
        diffs = compare_file(run / rel, reference / rel, ctx, result.provenance, binary)
        if diffs is None:
            result.not_compared.append(rel)
        elif diffs:
            result.differ[rel] = diffs
        else:
            result.equal.append(rel)
    return result


def format_report(result: Comparison, max_per_file: int = 20) -> str:
    """The comparison for a terminal: counts first, then each file's differences."""
    tol = "exact" if not (result.rtol or result.atol) else f"rtol {result.rtol:g}, atol {result.atol:g}"
    n_compared = len(result.equal) + len(result.differ)
    lines = [f"verify: {result.run} (run) against {result.reference} (reference), {tol}",
             f"  {n_compared} files compared: {len(result.equal)} equal, {len(result.differ)} differ "
             f"({result.n_values} values); {len(result.only_in_run)} only in the run, "
             f"{len(result.only_in_reference)} only in the reference; {len(result.not_compared)} not compared "
             f"(images, checkpoints: --binary compares their bytes)"]
    made = []
    for side in ("run", "reference"):
        commits = sorted(c[:7] for c in result.provenance.get(f"{side}: git_commit", ()) if c != "None")
        if commits:
            dirty = "True" in result.provenance.get(f"{side}: git_dirty", set())
            torch = ", ".join(sorted(result.provenance.get(f"{side}: torch", ())))
            made.append(f"{side} at commit {', '.join(commits)}" + (" with uncommitted changes" if dirty else "")
                        + (f" (torch {torch})" if torch else ""))
    if made:
        lines.append("  made: " + "; ".join(made))
    lines.append("  result: " + ("the same" if result.ok else "DIFFERENT"))
    if result.differ:
        lines.append("")
        lines.append("Differences (value in the run | in the reference):")
        for rel, diffs in result.differ.items():
            lines.append(f"  {rel}: {len(diffs)} value{'s' if len(diffs) != 1 else ''}")
            for d in diffs[:max_per_file]:
                lines.append(f"    {d.where}: {d.run} | {d.reference}")
            if len(diffs) > max_per_file:
                lines.append(f"    … and {len(diffs) - max_per_file} more (--max-per-file)")
    for title, names in (("Only in the run", result.only_in_run), ("Only in the reference", result.only_in_reference)):
        if names:
            lines.append("")
            lines.append(f"{title} ({len(names)}):")
            lines.extend(f"  {n}" for n in names)
    return "\n".join(lines)


def as_json(result: Comparison) -> dict:
    return {"run": str(result.run), "reference": str(result.reference), "rtol": result.rtol, "atol": result.atol,
            "same": result.ok, "equal": result.equal, "only_in_run": result.only_in_run,
            "only_in_reference": result.only_in_reference, "not_compared": result.not_compared,
            "differ": {rel: [vars(d) for d in diffs] for rel, diffs in result.differ.items()},
            "provenance": {k: sorted(v) for k, v in result.provenance.items()}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.verify",
        description="List every table and number in which a re-run's results folder differs from a reference "
                    "(e.g. the committed results/phantom). Exit status 0: the same; 1: different; 2: bad input.")
    parser.add_argument("run", help="the re-run's results folder, e.g. rerun/phantom")
    parser.add_argument("reference", help="the reference results folder, e.g. results/phantom")
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default 0: exact)")
    parser.add_argument("--atol", type=float, default=0.0, help="absolute tolerance for numbers (default 0: exact)")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="also ignore this column or key (timings are always ignored)")
    parser.add_argument("--binary", action="store_true", help="also compare the bytes of images and checkpoints")
    parser.add_argument("--max-per-file", type=int, default=20, metavar="N", help="differences shown per file")
    parser.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = compare(args.run, args.reference, args.rtol, args.atol, args.ignore, args.binary)
    except FileNotFoundError as err:
        print(f"verify: error: {err}", file=sys.stderr)
        return 2
    try:
        print(format_report(result, args.max_per_file), flush=True)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stdout = None
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(result), indent=1))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
