"""Command line: several GPUs train through ``accelerate launch``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .. import config
from .loop import output_dir, train


def main(argv: Sequence[str] | None = None) -> int:
    """``accelerate launch -m helpers.diffusion --dataset brats20 --profile paper``
    trains with the step's configuration on every visible GPU (notebook 03
    then finds the run finished and only plots it)."""
    import argparse

    from ..common import results_dir as default_results_dir
    from ..common import save_params

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dataset", default="phantom")
    parser.add_argument("--profile", default=None, help="as ./runall.sh: gpu with CUDA, else cpu")
    parser.add_argument("--results-dir", default=None, help="default: results/<dataset>")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a setting, as ./runall.sh --set (e.g. train_diffusion.max_steps=100)")
    args = parser.parse_args(argv)

    profile = args.profile or config.default_profile()  # the runner's default too: the same resolved settings
    settings = config.resolve(args.dataset, profile, config.parse_overrides(args.set))["train_diffusion"]
    results = Path(args.results_dir) if args.results_dir else default_results_dir(args.dataset)
    summary = train(results, settings)
    if int(os.environ.get("RANK", "0")) == 0:
        save_params(config.as_dict(settings), output_dir(results), name="params_cli.yaml")
        print(summary)
    return 0

