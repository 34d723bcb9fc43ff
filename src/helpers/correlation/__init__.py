"""Exact all-pairs Pearson correlation at matrix-multiply speed.

For every synthetic image, its exact Pearson correlation with every training
image and the best match(es), computed as streamed matrix products on a CPU
(NumPy/BLAS) or a GPU (CuPy) instead of one ``scipy.stats.pearsonr`` per pair.

Modules: :mod:`.engine` (the streamed passes, and why the result is exact),
:mod:`.search` (candidate band and running top-k), :mod:`.exact` (centring
and exact pair arithmetic), :mod:`.measures` (channel groups of one pass),
:mod:`.io` (arrays, ``.npy`` files, image folders), :mod:`.backend`
(NumPy/CuPy), :mod:`.integer` (uint8 images on int8 units through
``torch._int_mm``), :mod:`.arithmetic` (integer or float path, chosen by a
probe) and :mod:`.result`.

Imports neither torch nor (unless asked) CuPy at import time; the integer
path imports torch when an engine call on uint8 images uses or probes it.
"""

from .arithmetic import ARITHMETIC_ENV, Arithmetic, choose_arithmetic
from .backend import Backend, cupy_status, get_backend
from .engine import CHUNK_BYTES, DEFAULT_MEMORY_BUDGET, match_groups, pair_correlations, plan_sizes, top_matches
from .exact import MAX_EXACT_DIM
from .integer import PIXEL_BLOCK_MAX
from .io import IMAGE_SUFFIXES, ImageSet, list_image_files, open_images
from .result import MatchResult

__all__ = [
    "ARITHMETIC_ENV", "Arithmetic", "Backend", "CHUNK_BYTES", "DEFAULT_MEMORY_BUDGET", "IMAGE_SUFFIXES", "ImageSet",
    "MAX_EXACT_DIM", "MatchResult", "PIXEL_BLOCK_MAX", "choose_arithmetic", "cupy_status", "get_backend",
    "list_image_files", "match_groups", "open_images", "pair_correlations", "plan_sizes", "top_matches",
]
