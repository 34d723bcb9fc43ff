"""The audit command, ``python -m helpers.audit`` (``study-correlate``):
any synthetic images against any training images, written in step 05's
layout with the synthetic set named ``synthetic``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import correlation
from ..config import CorrelateSettings, build
from .measures import measure_summary, study_measures
from .result import StudyAudit
from .runner import run_audit
from .study_data import StudyData
from .tables import reported_interval

#: the name of the synthetic set of the audit command
SYNTHETIC_NAME = "synthetic"


#: where the command's defaults differ from step 05's (the rest are the schema's, CorrelateSettings):
#: all channels as one vector only, one match per image, no planted control
COMMAND_DEFAULTS = {"each": False, "top_k": 1, "n_control": 0}


def command_settings(**values) -> CorrelateSettings:
    """The command's settings: step 05's schema (:class:`helpers.config.CorrelateSettings`,
    checked as it checks a config file) with :data:`COMMAND_DEFAULTS`."""
    values = {**COMMAND_DEFAULTS, **values}
    return build("correlate", values, {k: "the audit command" for k in values})


def audit(synthetic, training, test=None, *, out: str | Path = "correlation_audit",
          cfg: CorrelateSettings | None = None, progress: bool = True) -> StudyAudit:
    """Audit a set of synthetic images against training images (and a
    held-out test set for the baseline) for the measures of ``cfg``; writes
    the same layout and summary.json as step 05, the synthetic set named
    ``synthetic``."""
    cfg = cfg or command_settings()
    train = correlation.open_images(training, label="training")
    syn = correlation.open_images(synthetic, label="synthetic")
    tst = correlation.open_images(test, label="test") if test is not None else None
    names = train.channel_names or [f"ch{i}" for i in range(train.image_shape[0])]
    for images in (train, syn, tst):
        if images is not None and images.channel_names is None:
            images.channel_names = names  # unnamed (folders, plain arrays): ch0, ch1, ...
    for other in (syn, tst):
        if other is not None and other.shape != train.shape:
            raise ValueError(f"{other.label} images ({other.label}) are {'×'.join(map(str, other.shape))} but training "
                             f"images ({train.label}) are {'×'.join(map(str, train.shape))}")
    data = StudyData(None, "audit", names, train, tst, None, None, {SYNTHETIC_NAME: (syn, None)})
    measures, headline = study_measures(names, cfg.channels, each=cfg.each, joint=cfg.joint,
                                        headline=cfg.headline_channel)
    extra = {"synthetic": str(synthetic), "training": str(training), "test": None if test is None else str(test),
             "image_shape": list(train.shape), "n_synthetic": syn.n}
    return run_audit(data, measures, headline, out, cfg, progress=progress, extra=extra)


def channels_arg(values: Sequence[str] | None) -> tuple[list | None, bool, bool]:
    """``--channels`` tokens -> (channels, each, joint): ``all`` = the
    selected channels as one vector (default), ``each`` = one measure per
    channel (both may be given); other tokens select channels by index or name."""
    tokens = [str(v) for v in (values or ["all"])]
    modes = {t.lower() for t in tokens} & {"all", "each"}
    chosen = [int(t) if t.lstrip("-").isdigit() else t for t in tokens if t.lower() not in ("all", "each")]
    each = "each" in modes
    return chosen or None, each, "all" in modes or not each


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.audit",
        description="Audit synthetic images for copies of training images: exact Pearson correlation of "
                    "every synthetic image with every training image (best match and its value), per measure.")
    parser.add_argument("--synthetic", required=True, help="folder of PNG/JPEG images or .npy array")
    parser.add_argument("--training", required=True, help="folder of PNG/JPEG images or .npy array")
    parser.add_argument("--test", help="held-out real images (same format) for the real-vs-real baseline")
    parser.add_argument("--channels", nargs="+", default=["all"],
                        help="'all' (default: all channels as one vector), 'each' (one result per channel, as the "
                             "paper), both, and/or channel indices to restrict to")
    parser.add_argument("--headline", help="the measure printed first (default: the first channel, or 'all')")
    parser.add_argument("--top-k", type=int, default=COMMAND_DEFAULTS["top_k"],
                        help=f"training matches kept per image (default {COMMAND_DEFAULTS['top_k']})")
    parser.add_argument("--out", default="correlation_audit", help="output folder (default ./correlation_audit)")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    parser.add_argument("--memory-gb", type=float, default=CorrelateSettings.memory_budget_gb,
                        help=f"memory budget of the engine (GiB; default {CorrelateSettings.memory_budget_gb:g})")
    parser.add_argument("--control", type=int, default=COMMAND_DEFAULTS["n_control"],
                        help=f"planted copies of training images (uint8; default {COMMAND_DEFAULTS['n_control']})")
    parser.add_argument("--seed", type=int, default=CorrelateSettings.seed)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        channels, each, joint = channels_arg(args.channels)
        cfg = command_settings(channels=channels, each=each, joint=joint, headline_channel=args.headline,
                               top_k=args.top_k, backend=args.backend, memory_budget_gb=args.memory_gb,
                               n_control=args.control, seed=args.seed)
        result = audit(args.synthetic, args.training, args.test, out=args.out, cfg=cfg, progress=not args.quiet)
    except (ValueError, FileNotFoundError, RuntimeError) as err:  # ConfigError is a ValueError
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    s = result.summary
    print(f"{s['n_synthetic']} synthetic × {s['n_train']} training images, {len(s['measures'])} measure(s) "
          f"({s['pairs']:,} correlations in {s['seconds']:.2f} s, {s['backend']}: {s['backend_note']})")
    for name in s["measures"]:
        info = measure_summary(s, name)
        syn = info["models"][SYNTHETIC_NAME]
        q = syn["quantiles"]
        print(f"[{name}{', headline' if name == s['headline'] else ''}] {info['description']}")
        if q["max"] is not None:
            print(f"  max correlation per synthetic image: median {q['p50']:.4f}, p95 {q['p95']:.4f}, "
                  f"max {q['max']:.4f}" + (f" ({syn['constant']} constant)" if syn["constant"] else ""))
        for tname, rec in syn["exceedances"].items():
            lo, hi = reported_interval(rec)
            print(f"  above {tname} ({info['thresholds'][tname]:.4f}): {rec['n_above']} "
                  f"({100 * rec['fraction']:.2f} %, Wilson 95 % CI {100 * lo:.2f}–{100 * hi:.2f} %)")
    print(f"wrote {len(result.written)} files under {result.out} (summary.json, one folder per measure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
