"""``python -m helpers.diffusion`` / ``accelerate launch -m helpers.diffusion``."""

from .cli import main

raise SystemExit(main())
