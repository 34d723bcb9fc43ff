"""Tested logic of the study "Beware of diffusion models for synthesizing
medical images" (Akbar, Wang & Eklund, 2025). The notebooks in notebooks/
stay thin and call into these modules; the README's code map says which
module holds what."""

__version__ = "0.1.0"

from .common import use_text_progress_bars as _use_text_progress_bars

_use_text_progress_bars()
