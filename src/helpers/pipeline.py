"""The runner behind ``./runall.sh``: executes the numbered notebooks with
papermill, in order, with parameters from ``configs/``.

Each step's executed notebook (and an HTML rendering for reviewers) goes to
``results/<name>/notebooks/``. A step is skipped when its notebook, its
resolved parameters and its inputs (the raw data folder for step 01, the
files every earlier step wrote) are unchanged since it last succeeded and
its own outputs are still there; ``--force`` runs it anyway. A failed step
keeps its partial notebook as ``NN_name.failed.ipynb`` and stops the run.

One run per results folder (:mod:`helpers.runlock`): a second runner on the
same folder is refused at once. No process outlives the runner
(:mod:`helpers.lifetime`): its kernels, their side-by-side workers and
torchrun jobs die with it however it dies, and Ctrl-C, ``kill`` or a closed
terminal stop them all within seconds and say what was kept. A killed run
resumes to the same result: every result file is published atomically, and
the files a killed attempt of a step wrote count as that step's outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import common, config, lifetime, models, plan, report, runlock
from .layout import INDEX_FROM_NOTEBOOKS, RUNNER_FILES, RUNNER_FOLDERS, Results, Run

KERNEL_NAME = "beware-study"
SKIP_DIRS = set(RUNNER_FOLDERS)
SKIP_FILES = set(RUNNER_FILES)  # the runner's own, written around the steps, not by them
#: the checkout's step notebooks (a results folder's executed ones: helpers.layout.Results.notebooks)
SOURCE_NOTEBOOKS = "notebooks"
COMPARE_NOTEBOOK = "compare_datasets"


@dataclass
class Step:
    name: str  # "02_train_stylegan"
    notebook: Path

    @property
    def number(self) -> str:
        return self.name[:2]

    @property
    def section(self) -> str:
        return common.step_section(self.name)


class PipelineError(RuntimeError):
    """A problem the user must fix; printed as one line, exit status 1."""


class Interrupted(PipelineError):
    """Ctrl-C, ``kill`` or a closed terminal during a step."""

    def __init__(self, step: Step, partial: Path) -> None:
        self.step = step
        super().__init__(
            f"interrupted during step {step.name}; every process of the step is stopped. Kept: the steps before "
            f"it, and what it had finished (checkpoints, finished sample batches, written tables; partial "
            f"notebook: {common.display_path(partial)}). Run the same command again to continue from there")


# --------------------------------------------------------------------------
# Steps and parameters
# --------------------------------------------------------------------------

def discover_steps(root: Path) -> tuple[list[Step], list[str]]:
    """The numbered notebooks present, and the contract steps that are not."""
    found = {p.stem: Step(p.stem, p) for p in sorted((root / SOURCE_NOTEBOOKS).glob("[0-9][0-9]_*.ipynb"))}
    missing = [s for s in common.STEPS if s not in found]
    return list(found.values()), missing


#: the names every numbered notebook's parameters cell declares (papermill injects them)
NOTEBOOK_PARAMETERS = ("dataset", "profile", "results_dir", "settings")


def notebook_parameters(step: Step, resolved: config.Resolved, results: Path, root: Path,
                        declared: Mapping[str, Any]) -> dict:
    """What papermill injects into ``step``'s parameters cell: the dataset,
    profile, results folder and the step's resolved settings as one dict."""
    missing = [name for name in NOTEBOOK_PARAMETERS if name not in declared]
    extra = sorted(set(declared) - set(NOTEBOOK_PARAMETERS))
    if missing or extra:
        raise PipelineError(
            f"{step.notebook}: its parameters cell must declare exactly {', '.join(NOTEBOOK_PARAMETERS)} "
            f"(settings have their defaults in helpers/config/schema.py); "
            + (f"missing: {', '.join(missing)}" if missing else f"also declares: {', '.join(extra)}"))
    try:
        results_param = str(results.relative_to(root))
    except ValueError:
        results_param = str(results)
    return {"dataset": resolved.dataset, "profile": resolved.profile, "results_dir": results_param,
            "settings": config.as_dict(resolved[step.section])}


# --------------------------------------------------------------------------
# Stamps: was a step already done with these inputs?
# --------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``folder`` except the runner's
    own (notebooks, stamps, locks, the plan, the landing page)."""
    out: dict[str, tuple[int, int]] = {}
    if not folder.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        top = rel == Path(".")
        if top:
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            if name == runlock.LOCK_NAME or (top and name in SKIP_FILES):
                continue
            path = Path(dirpath) / name
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            out[str(rel / name)] = (stat.st_size, stat.st_mtime_ns)
    return out


def raw_fingerprint(raw_dir: str | None) -> str | None:
    """A cheap fingerprint of a raw data folder: names, sizes, mtimes."""
    if raw_dir is None:
        return None
    return common.stable_hash(sorted(snapshot(Path(raw_dir)).items()))


def stamp_key(step: Step, params: Mapping, upstream: list[dict], raw: str | None) -> str:
    return common.stable_hash({
        "notebook": common.file_sha256(step.notebook),
        "params": params,
        "upstream": [u.get("outputs", {}) for u in upstream],
        "raw": raw,
    })


def outputs_intact(outputs: Mapping[str, list], results: Path) -> bool:
    current = snapshot(results)
    return all(tuple(current.get(rel, ())) == tuple(sig) for rel, sig in outputs.items())


# --------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------

def ensure_kernel() -> str:
    """Register this environment's Python as a Jupyter kernel (inside the
    environment), so papermill never picks another Python's ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if spec.argv and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name="Python 3 (beware study)", prefix=sys.prefix)
    return KERNEL_NAME


def strip_machine_paths(notebook: Path, root: Path) -> None:
    """Write the checkout's folder out of an executed notebook (papermill's
    input/output paths, printed paths, warnings from packages in .venv), so
    a committed report names paths relative to the checkout, not a machine's."""
    text = notebook.read_text()
    for prefix in {str(root) + "/", str(Path(root).resolve()) + "/"}:
        text = text.replace(json.dumps(prefix)[1:-1], "")
    common.write_text(notebook, text)


def _kernel_manager_class():
    """Kernels that talk to papermill over local IPC sockets, not TCP: nothing
    listens on a network port, and ipykernel has no reason to warn that the
    traffic is unencrypted. Windows has no IPC sockets and keeps TCP."""
    from jupyter_client.manager import AsyncKernelManager

    if os.name == "nt":
        return AsyncKernelManager

    class LocalSocketKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "ipc"
            # the sockets live in a private folder, removed with the kernel;
            # jupyter_client's default puts them in the working directory,
            # where a killed kernel left them in the user's checkout
            self.ipc_dir = tempfile.mkdtemp(prefix="study-kernel-")
            self.ip = os.path.join(self.ipc_dir, "kernel")

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart=restart)
            if not restart:
                shutil.rmtree(self.ipc_dir, ignore_errors=True)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            # the kernel dies with the runner (its parent-death signal, armed
            # between fork and exec); its workers die with the kernel
            kw.setdefault("preexec_fn", lifetime.die_with_parent)
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return LocalSocketKernelManager


def _failure_reason(err: BaseException) -> str:
    """The error as one line: every line of a multi-line message is kept
    (nibabel names the file on the first line and the problem on the last)."""
    ename = getattr(err, "ename", type(err).__name__)
    evalue = " ".join(line.strip() for line in str(getattr(err, "evalue", err)).splitlines() if line.strip())
    return f"{ename}: {evalue}".strip()


def execute_step(step: Step, params: dict, out_dir: Path, root: Path, kernel: str,
                 index_href: str | None = INDEX_FROM_NOTEBOOKS) -> float:
    """Run one notebook; returns seconds. Raises PipelineError on failure,
    keeping the partial notebook as ``NN_name.failed.ipynb``."""
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{step.name}.ipynb"
    failed = out_dir / f"{step.name}.failed.ipynb"
    tmp = out_dir / f"{step.name}.running.ipynb"
    log_path = out_dir / f"{step.name}.log"
    common.write_yaml(out_dir / f"{step.name}.params.yaml", params)

    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("papermill")
    logger.addHandler(handler)
    start = time.perf_counter()
    try:
        with _signals_stop_the_step():
            papermill.execute_notebook(
                str(step.notebook), str(tmp), parameters=params, kernel_name=kernel, language="python",
                cwd=str(root), progress_bar=sys.stderr.isatty(), log_output=True,
                kernel_manager_class=_kernel_manager_class(),
            )
    except KeyboardInterrupt as err:  # Ctrl-C, kill, a closed terminal: stop every process, keep what ran
        lifetime.stop_descendants()
        if tmp.exists():
            os.replace(tmp, failed)
        raise Interrupted(step, failed) from err
    except BaseException as err:
        lifetime.stop_descendants()  # a kernel that died leaves no worker behind
        if tmp.exists():
            os.replace(tmp, failed)
        raise PipelineError(
            f"step {step.name} failed: {_failure_reason(err)} (partial notebook: {failed}; log: {log_path})"
        ) from err
    finally:
        logger.removeHandler(handler)
        handler.close()
    seconds = time.perf_counter() - start
    lifetime.stop_descendants()  # nothing of a finished step lives on (e.g. a kernel's multiprocessing helper)
    strip_machine_paths(tmp, root)
    os.replace(tmp, final)
    failed.unlink(missing_ok=True)
    report.render_html(final, final.with_suffix(".html"), index_href, root)
    return seconds


def _select(steps: list[Step], start: str | None, only: str | None, stop: str | None = None) -> list[Step]:
    numbers = [s.number for s in steps]
    for flag, value in (("--from", start), ("--only", only), ("--to", stop)):
        if value is not None and value.zfill(2) not in numbers:
            raise PipelineError(f"{flag} {value}: no notebook with that number (have {', '.join(numbers)})")
    if only is not None:
        return [s for s in steps if s.number == only.zfill(2)]
    return [s for s in steps if (start is None or s.number >= start.zfill(2))
            and (stop is None or s.number <= stop.zfill(2))]


def _interrupt(signum, frame):  # a `kill` or a closed terminal stops the run like Ctrl-C does
    raise KeyboardInterrupt


def _stop_step_then_interrupt(signum, frame):
    """During a step: stop the kernel and its workers *first*, then unwind.
    Unwinding first would let nbclient ask the busy kernel to shut down
    gracefully, and a kernel exits only after joining its side-by-side
    workers: Ctrl-C would then wait for them to finish."""
    lifetime.stop_descendants()
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_stop_the_step():
    """Ctrl-C, ``kill`` and a closed terminal stop the step's processes at
    once (main thread only: Python delivers signals there)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kinds = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {signum: signal.signal(signum, _stop_step_then_interrupt) for signum in kinds}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _size_folders(results: Path) -> list[Path]:
    """The sweep's size folders that step 01 listed (``data/sizes.json``)."""
    path = Run(results).data.sizes
    try:
        rows = common.read_json(path)["sizes"] if path.is_file() else []
    except (ValueError, KeyError, TypeError):
        return []
    return [results / row["folder"] for row in rows if isinstance(row, dict) and "folder" in row]


def _lock(locks: runlock.Locks, results: Path) -> None:
    """Hold the results folder and its size folders; a first hold also
    removes the temporary files a killed run left (nothing else writes there)."""
    first = results.resolve() not in locks.held
    locks.take([results, *_size_folders(results)])
    if first:
        left = common.remove_temporaries(results)
        if left:
            print(f"study: removed {len(left)} temporary file(s) a killed run left, "
                  f"e.g. {common.display_path(left[0])}")


def _refuse_other_profile(results: Path, profile: str, stamps: Path) -> None:
    """A folder holding another profile's results is not overwritten by
    accident (e.g. ``--profile reference`` into the default run's folder):
    the run stops before any step and says how to go on."""
    for stamp_file in sorted(stamps.glob("*.json")):
        try:
            theirs = common.read_json(stamp_file).get("profile")
        except (ValueError, AttributeError):
            continue
        if theirs and theirs != profile:
            raise PipelineError(
                f"{common.display_path(results)} holds a run of profile {theirs!r} "
                f"({common.display_path(stamp_file)}); this is profile {profile!r}: give it its own folder "
                f"(--name {results.name}_{profile}) or replace that run (--force)")


def run(args: argparse.Namespace) -> int:
    import signal

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    with runlock.Locks() as locks:
        return _run(args, locks)


def check_model_names(resolved) -> None:
    """Every ``models`` key names a registered model (the registry sits above
    the settings' schema, so the names are checked here, before any step)."""
    for section, settings in resolved.settings.items():
        unknown = [m for m in getattr(settings, "models", ()) if m not in models.REGISTRY]
        if unknown:
            where = resolved.sources[section].get("models", "the settings")
            raise config.ConfigError(f"{where}: {section}.models: unknown model(s) {', '.join(map(repr, unknown))}; "
                                     f"registered (helpers.models): {', '.join(models.REGISTRY)}")


def _run(args: argparse.Namespace, locks: runlock.Locks) -> int:
    import papermill

    root = common.repo_root()
    results_root = Path(args.results).resolve() if args.results else (
        Path(os.environ["STUDY_RESULTS"]).resolve() if os.environ.get("STUDY_RESULTS") else root / "results")
    overrides = config.parse_overrides(args.set)
    if args.compare_with and not Path(args.compare_with).is_dir():
        raise PipelineError(f"--compare-with {args.compare_with}: no such results folder (e.g. results/phantom)")
    if args.processes is not None:
        overrides.setdefault("common", {})["processes"] = args.processes
    if args.dataset == "compare":
        return run_compare(root, results_root, overrides, args.show_params, locks)

    # the terminal shows what the notebooks write to stderr (progress bars,
    # warnings); everything they print is in notebooks/NN_name.log and the
    # executed notebook
    console = logging.StreamHandler(sys.stdout)
    console.addFilter(lambda record: record.levelno >= logging.WARNING or not record.name.startswith("papermill"))
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[console])
    profile = args.profile or config.default_profile()
    resolved = config.resolve(args.dataset, profile, overrides, raw_dir=args.data, root=root)
    check_model_names(resolved)
    if args.show_params:
        from . import criteria

        print(resolved.describe())
        print(f"# models and controls (helpers.models): {', '.join(models.REGISTRY)}")
        print(f"# criteria judged on every run by step 05 (helpers.criteria): {', '.join(criteria.CRITERIA)} "
              f"({criteria.L2_CRITERION!r} is Gu et al.'s)")
        return 0
    name = args.name or args.dataset
    results = results_root / name
    out_dir = Results(results).notebooks
    stamps = Results(results).stamps
    steps, missing = discover_steps(root)
    selected = _select(steps, args.start, args.only, args.stop)
    kernel = ensure_kernel()

    if args.plan:  # read-only: no lock
        return plan.print_plan(resolved, results)

    _lock(locks, results)
    if not args.force:
        _refuse_other_profile(results, profile, stamps)
    lifetime.become_runner()
    print(f"study: dataset={args.dataset} profile={profile} results={results}")
    if missing:
        print(f"study: contract steps without a notebook yet (not run): {', '.join(missing)}")

    upstream: list[dict] = []
    run_log = []
    planned = False
    for step in steps:
        declared = papermill.inspect_notebook(str(step.notebook))
        params = notebook_parameters(step, resolved, results, root, declared)
        raw = raw_fingerprint(params["settings"].get("raw_dir")) if step.number == "01" else None
        key = stamp_key(step, params, upstream, raw)
        stamp_file = stamps / f"{step.name}.json"
        stamp = common.read_json(stamp_file) if stamp_file.exists() else None
        label = f"[{step.number}] {step.name}"
        if step not in selected:
            if stamp:
                upstream.append(stamp)
            continue
        unused = models.not_sampled(step.section, resolved["sample"].models)
        if unused is not None:
            print(f"{label}: not run ({unused.name} is not in sample.models)")
            continue
        if (not args.force and stamp and stamp.get("key") == key
                and outputs_intact(stamp.get("outputs", {}), results)
                and (out_dir / f"{step.name}.ipynb").exists()):
            print(f"{label}: up to date, skipped (--force to re-run)")
            upstream.append(stamp)
            continue
        if step.number in plan.STEPS and not planned:  # a plan before the long steps
            planned = True
            plan.check_before_run(resolved, results, [s.number for s in selected if s.number >= step.number],
                                  args.force)
        print(f"{label}: running …", flush=True)
        # the folder as it was before the first attempt at this step: what a
        # killed attempt wrote and the resumed one kept counts as the step's
        attempt_file = stamps / f"{step.name}.before.json"
        before = {rel: tuple(sig) for rel, sig in common.read_json(attempt_file).items()} \
            if attempt_file.is_file() else snapshot(results)
        common.write_json(attempt_file, before)
        seconds = execute_step(step, params, out_dir, root, kernel)
        after = snapshot(results)
        # what this run wrote, plus what an earlier run of the step wrote and
        # this one kept (a resumed training rewrites only part of its outputs)
        mine = {rel for rel, sig in after.items() if before.get(rel) != sig}
        mine |= set((stamp or {}).get("outputs", {}))
        outputs = {rel: list(after[rel]) for rel in sorted(mine) if rel in after}
        stamp = {"key": key, "seconds": round(seconds, 1), "profile": profile,
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "outputs": outputs}
        common.write_json(stamp_file, stamp)
        attempt_file.unlink(missing_ok=True)
        upstream.append(stamp)
        run_log.append((step.name, seconds))
        print(f"{label}: done in {seconds:.0f} s", flush=True)
        _lock(locks, results)  # after step 01: the sweep's size folders too

    if run_log:
        total = sum(s for _, s in run_log)
        print("study: " + ", ".join(f"{n} {s:.0f} s" for n, s in run_log) + f"; total {total:.0f} s")
    index = report.write_index(results, f"Study results: {name} ({args.dataset}, profile {profile})",
                               finding_threshold=resolved["figures"].finding_threshold)
    print(f"study: executed notebooks and HTML in {common.display_path(out_dir)}; start at {common.display_path(index)}")
    if args.compare_with:  # a reviewer's check: does this run reproduce the reference? (helpers.verify)
        from . import verify

        return verify.main([str(results), args.compare_with]) and 3
    return 0


def run_compare(root: Path, results_root: Path, overrides: Mapping | None = None,
                show_params: bool = False, locks: runlock.Locks | None = None) -> int:
    """The cross-dataset comparison over every results/<name>/ present
    (read-only there: it holds the lock of its own folder only)."""
    import papermill

    unknown = sorted(set(overrides or {}) - {"compare"})
    if unknown:
        raise PipelineError(f"--set {unknown[0]}.…: 'compare' takes only compare.KEY settings "
                            f"({', '.join(config.field_names('compare'))})")
    settings = config.build("compare", (overrides or {}).get("compare", {}),
                            {k: "--set" for k in (overrides or {}).get("compare", {})})
    if show_params:
        print("compare:\n" + "\n".join(f"  {k}: {v}" for k, v in config.as_dict(settings).items()))
        return 0
    notebook = root / SOURCE_NOTEBOOKS / f"{COMPARE_NOTEBOOK}.ipynb"
    if not notebook.exists():
        raise PipelineError(f"{notebook} does not exist yet")
    out_dir = results_root / "compare"
    if locks is not None:
        locks.take([out_dir])
        lifetime.become_runner()
    declared = papermill.inspect_notebook(str(notebook))
    params = {"results_root": common.display_path(results_root), "out_dir": common.display_path(out_dir),
              "settings": config.as_dict(settings)}
    if set(declared) != set(params):
        raise PipelineError(f"{notebook}: its parameters cell must declare exactly {', '.join(params)}")
    seconds = execute_step(Step(COMPARE_NOTEBOOK, notebook), params, out_dir, root, ensure_kernel(), None)
    print(f"study: comparison done in {seconds:.0f} s: {out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="./runall.sh",
        description="Run the study's notebooks in order with papermill (see README.md).",
    )
    parser.add_argument("dataset", nargs="?", default="phantom",
                        help="phantom (default, embedded), phantom_cxr, brats20, brats21, cxr; or 'compare'")
    parser.add_argument("--data", help="folder holding the raw dataset (real datasets)")
    parser.add_argument("--profile", help="smoke | cpu | reference | gpu | paper (default: gpu with CUDA, else cpu)")
    parser.add_argument("--from", dest="start", metavar="NN", help="start at step NN")
    parser.add_argument("--only", metavar="NN", help="run only step NN")
    parser.add_argument("--to", dest="stop", metavar="NN", help="stop after step NN")
    parser.add_argument("--force", action="store_true",
                        help="re-run steps even when up to date; start even when the disk looks too small")
    parser.add_argument("--results", metavar="DIR", help="results root (default: results/ or $STUDY_RESULTS)")
    parser.add_argument("--name", help="results folder name (default: the dataset), e.g. phantom_n8")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one parameter, e.g. --set prepare_data.n_train_subjects=8")
    parser.add_argument("--show-params", action="store_true",
                        help="print every step's resolved settings and where each came from; run nothing")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="train, sample and correlate with N torch.distributed processes (one per GPU; "
                             "gloo on a CPU); the same as --set common.processes=N")
    parser.add_argument("--plan", action="store_true",
                        help="print the time, memory and disk steps 02-05 will take here (a few iterations "
                             "measured); run nothing")
    parser.add_argument("--compare-with", metavar="DIR",
                        help="after the run, list every table and number that differs from the results folder DIR "
                             "(e.g. results/phantom; python -m helpers.verify); exit status 3 when any differs")
    parser.add_argument("--register-kernel", action="store_true",
                        help="register this environment as the Jupyter kernel the notebooks name; run nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.register_kernel:
        print(f"study: Jupyter kernel '{ensure_kernel()}' runs the Python of {common.display_path(sys.prefix)}")
        return 0
    try:
        return run(args)
    except Interrupted as err:
        print(f"study: {err}", file=sys.stderr)
        return 130
    except (PipelineError, FileNotFoundError, ValueError, plan.PlanError, runlock.RunLockError) as err:
        print(f"study: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # between steps: nothing of a step is running
        print("study: interrupted between steps; every finished step is kept. Run the same command again "
              "to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
