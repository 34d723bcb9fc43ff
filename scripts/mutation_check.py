#!/usr/bin/env python
"""Plant known bugs, one at a time, in a temporary copy of the checkout and
see whether the tests catch them (a small mutation check).

Why: a test suite that passes says little until it has been seen to fail
for the bugs that matter. The list below holds the bugs a reviewer planted
in the training objectives, the resume and identity checks and the
memorization criteria, and a few more of the same kind. For each one the
script copies the checkout (the files git tracks or would track, never
``results/``) into a temporary folder, applies the one edit, runs the
tests named for it there (``pytest -x``: the first failure is enough) and
records caught (a test failed) or survived (all passed). The checkout
itself is never changed. Run it before saying that a change to training,
resume or criteria code is done; it is not part of ``./runtests.sh``
(several minutes on 2 cores).

    .venv/bin/python scripts/mutation_check.py            # every mutant
    .venv/bin/python scripts/mutation_check.py --list     # what would be planted
    .venv/bin/python scripts/mutation_check.py --only r1_times_zero v_target_is_epsilon

The tests are first run once on an unchanged copy: they must pass there,
or every mutant would look caught. Exit status 0 when every mutant was
caught, 1 when one survived, 2 when a mutant no longer applies (its code
was changed: update the list), 3 when the unchanged copy fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str          # relative to the checkout
    old: str           # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]
    why: str


OBJ = "tests/test_objectives.py"
MUTANTS: tuple[Mutant, ...] = (
    # --- the three bugs of issue 23's table, and the seed-change resume
    Mutant("v_target_is_epsilon", "src/helpers/diffusion/trainer.py",
           "target = setup.noise_scheduler.get_velocity(images, noise, timesteps)", "target = noise",
           (OBJ, "tests/test_diffusion.py"), "v-prediction trained on the ε target"),
    Mutant("r1_times_zero", "src/helpers/stylegan/trainer.py",
           "_touching(r1 * (c.r1_gamma / 2), on_real)", "_touching(r1 * (c.r1_gamma / 2) * 0, on_real)",
           (OBJ, "tests/test_stylegan.py"), "StyleGAN's R1 penalty multiplied by 0"),
    Mutant("diffusion_resume_ignores_checkpoints", "src/helpers/diffusion/loop.py",
           "found = ckpt.load_latest_checkpoint(ckpt_dir)", "found = None",
           ("tests/test_diffusion.py", "tests/test_distributed_training.py"),
           "diffusion training starts again from step 0 instead of resuming"),
    Mutant("stylegan_seed_not_in_identity", "src/helpers/stylegan/trainer.py",
           'out = {**self.cfg.identity(), "seed": self.seed}', "out = {**self.cfg.identity()}",
           ("tests/test_stylegan.py",), "StyleGAN resumes silently when the seed changed"),
    # --- more objectives
    Mutant("path_length_interval_dropped", "src/helpers/stylegan/trainer.py",
           "_touching(penalty * c.pl_weight, fake[:, 0, 0, 0]).mean().mul(c.pl_interval)",
           "_touching(penalty * c.pl_weight, fake[:, 0, 0, 0]).mean()",
           (OBJ, "tests/test_stylegan.py"), "lazy path-length penalty not scaled by its interval"),
    Mutant("path_length_mean_over_w_dim", "src/helpers/stylegan/trainer.py",
           "return jt_y.square().sum(2).mean(1).sqrt()", "return jt_y.square().mean(2).mean(1).sqrt()",
           (OBJ,), "path length averaged instead of summed over the w dimensions"),
    Mutant("generator_loss_sign", "src/helpers/stylegan/trainer.py",
           "loss = F.softplus(-self.run_D(fake)).mean()", "loss = F.softplus(self.run_D(fake)).mean()",
           (OBJ, "tests/test_stylegan.py"), "G minimises softplus(D(G(z))) (helps D)"),
    Mutant("discriminator_real_term_sign", "src/helpers/stylegan/trainer.py",
           "loss = F.softplus(on_fake).mean() + F.softplus(-on_real).mean()",
           "loss = F.softplus(on_fake).mean() + F.softplus(on_real).mean()",
           (OBJ, "tests/test_stylegan.py"), "D pushes reals towards 'fake'"),
    Mutant("stylegan_ema_reversed", "src/helpers/stylegan/trainer.py",
           "kept.copy_(torch.lerp(current[name], kept, beta))", "kept.copy_(torch.lerp(kept, current[name], beta))",
           (OBJ, "tests/test_stylegan.py"), "G_ema weighs the new weights by beta"),
    Mutant("diffusion_ema_skipped", "src/helpers/diffusion/trainer.py",
           "setup.ema.step(setup.unet.parameters())", "pass",
           (OBJ, "tests/test_diffusion.py"), "the diffusion EMA never updated"),
    Mutant("diffusion_last_timestep_never_drawn", "src/helpers/diffusion/trainer.py",
           "torch.randint(0, s.num_train_timesteps, ", "torch.randint(0, s.num_train_timesteps - 1, ",
           (OBJ,), "timesteps drawn from 0..T-2"),
    Mutant("diffusion_no_clipping", "src/helpers/diffusion/trainer.py",
           "    if s.max_grad_norm:\n", "    if False:\n",
           (OBJ,), "max_grad_norm ignored"),
    Mutant("zero_init_output_conv_only", "src/helpers/diffusion/model.py",
           "            torch.nn.init.zeros_(module.conv2.weight)\n", "            pass\n",
           ("tests/test_diffusion.py",), "res-blocks not zero-initialised (only the output conv)"),
    # --- resume and identity
    Mutant("stylegan_resume_ignores_checkpoints", "src/helpers/stylegan/loop.py",
           'latest = checkpoints.load_latest_checkpoint(ckpt_dir, device="cpu")', "latest = None",
           ("tests/test_stylegan.py",), "StyleGAN training starts again from step 0"),
    Mutant("stylegan_data_not_in_identity", "src/helpers/stylegan/loop.py",
           "device=device, data_fingerprint=data.fingerprint())", "device=device)",
           ("tests/test_stylegan.py",), "StyleGAN resumes on other training data"),
    Mutant("diffusion_seed_not_in_identity", "src/helpers/diffusion/loop.py",
           'identity = {**settings.identity(), "data": data.fingerprint()}',
           'identity = {**{k: v for k, v in settings.identity().items() if k != "seed"}, "data": data.fingerprint()}',
           ("tests/test_diffusion.py",), "diffusion resumes when the seed changed"),
    Mutant("loss_log_drops_the_checkpoint_row", "src/helpers/training.py",
           "int(fields[0]) <= step", "int(fields[0]) < step",
           ("tests/test_training.py", "tests/test_diffusion.py"), "resume loses the log row of its checkpoint"),
    Mutant("gradients_summed_not_averaged", "src/helpers/parallel.py",
           "    average(flat)\n", "    average(flat)\n    flat.mul_(dist.get_world_size())\n",
           ("tests/test_distributed_training.py",), "2 processes step with the sum of their gradients"),
    # --- the memorization criteria
    Mutant("criteria_no_neighbour_exclusion", "src/helpers/criteria.py",
           "memorization.nearest_l2(images, self.train, self.train_table, image_size=",
           "memorization.nearest_l2(images, self.train, None, image_size=",
           ("tests/test_criteria.py",), "ℓ2 ratio with the neighbour slice as second match"),
    Mutant("criteria_real_images_judged_by_their_own_percentiles", "src/helpers/criteria.py",
           'usable = {k: v for k, v in thresholds.items() if k.startswith("fixed")} if group == REAL else thresholds',
           "usable = thresholds",
           ("tests/test_criteria.py",), "held-out images judged against the percentiles they define"),
    Mutant("criteria_l2_ratio_one_half", "src/helpers/memorization/criteria.py",
           "GU_RATIO = 1.0 / 3.0", "GU_RATIO = 1.0 / 2.0",
           ("tests/test_criteria.py", "tests/test_memorization.py"), "Gu et al.'s ratio 1/2 instead of 1/3"),
    Mutant("criteria_exceedance_not_strict", "src/helpers/memorization/criteria.py",
           "(r[ok] > float(threshold))", "(r[ok] >= float(threshold))",
           ("tests/test_criteria.py", "tests/test_memorization.py"), "r equal to a threshold counted as exceeding"),
    Mutant("criteria_percentile_off_by_one", "src/helpers/memorization/criteria.py",
           "out[f\"baseline_p{int(p)}\"] = float(np.percentile(base, p))",
           "out[f\"baseline_p{int(p)}\"] = float(np.percentile(base, p - 1))",
           ("tests/test_criteria.py", "tests/test_memorization.py"), "baseline threshold at the wrong percentile"),
)


def checkout_files(root: Path) -> list[str]:
    """What a fresh clone plus the uncommitted work holds: tracked files and
    untracked ones git does not ignore, without results/."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout.decode()
    return sorted(f for f in set(out.split("\0")) if f and not f.startswith("results/") and (root / f).is_file())


def make_copy(root: Path, files: list[str], dest: Path) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)


def plant(copy: Path, mutant: Mutant) -> None:
    path = copy / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise LookupError(f"{mutant.name}: {mutant.path} holds {text.count(mutant.old)} copies of {mutant.old!r} "
                          "(expected 1): the code changed, update scripts/mutation_check.py")
    path.write_text(text.replace(mutant.old, mutant.new))


def run_tests(copy: Path, tests: tuple[str, ...], python: str, timeout: float,
              extra: tuple[str, ...] = ()) -> tuple[bool, str, float]:
    """(a test failed, last lines of pytest's output, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(copy / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONDONTWRITEBYTECODE": "1"}
    check = subprocess.run([python, "-c", "import helpers; print(helpers.__file__)"], cwd=copy, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(check).resolve().is_relative_to(copy.resolve()):
        raise RuntimeError(f"the copy imports helpers from {check}, not from {copy}: refusing to test the checkout")
    t0 = time.perf_counter()
    try:
        done = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *extra, *tests], cwd=copy,
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return True, f"timed out after {timeout:.0f} s (counted as caught)", time.perf_counter() - t0
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:1]
    return done.returncode != 0, " | ".join(failed + lines[-1:]), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="plant only these mutants")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"), help="interpreter to test with")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant's tests")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies (for a look)")
    parser.add_argument("--pytest-arg", action="append", default=[], metavar="ARG",
                        help="passed on to pytest, e.g. --pytest-arg=--deselect=tests/test_x.py::test_y")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the first run of the tests on an unchanged copy")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant(s) {sorted(unknown)}; --list shows them")
    if args.list:
        for m in mutants:
            print(f"{m.name:52s} {m.path}: {m.why}  [{' '.join(m.tests)}]")
        return 0

    files = checkout_files(ROOT)
    extra = tuple(args.pytest_arg)
    work = Path(tempfile.mkdtemp(prefix="mutation-check-"))
    rows, stale = [], []
    try:
        if not args.no_baseline:  # a test that fails without any mutant would count every mutant as caught
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            make_copy(ROOT, files, work / "unchanged")
            failed, tail, seconds = run_tests(work / "unchanged", tests, args.python, args.timeout, extra)
            print(f"[0/{len(mutants)}] unchanged copy: {'FAILED' if failed else 'passed'} in {seconds:.0f} s — {tail}",
                  flush=True)
            if failed:
                print("the tests fail without a planted bug: fix them first (or --no-baseline)", file=sys.stderr)
                return 3
            shutil.rmtree(work / "unchanged", ignore_errors=True)
        for i, m in enumerate(mutants, 1):
            copy = work / m.name
            make_copy(ROOT, files, copy)
            try:
                plant(copy, m)
            except LookupError as err:
                stale.append(str(err))
                print(f"[{i}/{len(mutants)}] {m.name}: NOT PLANTED ({err})", flush=True)
                continue
            caught, tail, seconds = run_tests(copy, m.tests, args.python, args.timeout, extra)
            rows.append((m, caught, tail, seconds))
            print(f"[{i}/{len(mutants)}] {m.name}: {'caught' if caught else 'SURVIVED'} in {seconds:.0f} s — {tail}",
                  flush=True)
            if not args.keep:
                shutil.rmtree(copy, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    survived = [m.name for m, caught, _, _ in rows if not caught]
    print(f"\nplanted {len(rows)}, caught {len(rows) - len(survived)}, survived {len(survived)}"
          + (f": {', '.join(survived)}" if survived else "") + (f"; {len(stale)} not planted" if stale else ""))
    if args.keep:
        print(f"copies kept under {work}")
    return 2 if stale else (1 if survived else 0)


if __name__ == "__main__":
    sys.exit(main())
