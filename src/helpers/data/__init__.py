"""Raw BraTS volumes or chest x-rays (or the phantom look-alikes) → the
uint8 image arrays and index tables every later step reads.

Output (under ``results_dir/data/``, the pipeline contract):
``train.npy`` / ``test.npy`` (uint8 N×C×H×W), ``train.csv`` / ``test.csv``
(one row per image), ``split.csv`` (the subject order used — a seeded
permutation or the authors' list — each subject's role, and which split it
was), ``skipped.csv`` (inputs left out), ``slice_fractions.csv`` (BraTS: the
slice rule's measure for every slice looked at) and ``meta.json``. Nothing is
ever written into the raw data folder.

One module per concern, so that a reader can be read (and changed) without
the other:

* :mod:`.raw` — sources, where to get the data, finding the folder;
* :mod:`.brats` — BraTS subject folders and NIfTI volumes (channel order);
* :mod:`.slicing` — the authors' intensity scaling, slice rule and resizing;
* :mod:`.cxr` — Kermany chest x-rays and their patient ids;
* :mod:`.splits` — the seeded split and the authors' subject order;
* :mod:`.store` — writing and reading the arrays;
* :mod:`.prepare` — :func:`prepare_dataset`, which dispatches to one reader.

Bad input raises :class:`DataError` naming the file and what was expected:
a missing modality, an unreadable or truncated NIfTI/JPEG, modalities of
one subject on different grids, NaN/Inf voxels, an image volume without a
positive voxel (a segmentation may be all zero), segmentation values that
are not integer labels 0–5, an x-ray file name without a patient id. An
empty or wrongly laid-out dataset folder raises :class:`DataLayoutError`.
With ``on_bad_subject="skip"`` a bad subject (x-ray: file) is left out and
listed in ``skipped.csv``; layout errors always stop.

This package knows no model: it imports neither torch nor the StyleGAN or
diffusion code, so data can be prepared on any machine. Every name below is
re-exported so that ``from helpers import data; data.<name>`` keeps working.
"""

from __future__ import annotations

from .base import DataError, DataLayoutError, DatasetNotFoundError, PreparedUnit, ReaderPlan, Unit
from .brats import (
                    BRATS_CHANNELS,
                    BRATS_COLUMNS,
                    BRATS_NAME_PATTERNS,
                    BRATS_SUFFIX,
                    NIFTI_SUFFIXES,
                    BratsVolumes,
                    brats_layout,
                    brats_subject_images,
                    find_brats_subjects,
                    load_brats_subject,
                    locate_modalities,
                    plan_brats,
                    read_volume,
)
from .cxr import (
                    CXR_CHANNELS,
                    CXR_CLASSES,
                    CXR_COLUMNS,
                    CXR_EXTENSIONS,
                    CXR_SPLIT_FOLDERS,
                    cxr_file_images,
                    find_cxr_root,
                    list_cxr_images,
                    load_cxr_image,
                    parse_cxr_patient,
                    plan_cxr,
)
from .prepare import SKIPPED_COLUMNS, prepare_dataset, prepare_from_settings
from .raw import SOURCES, locate_raw_data, missing_data_message
from .slicing import (
                    axial_slices,
                    brain_fraction,
                    keep_slice,
                    kept_slice_indices,
                    pad_center,
                    resize_slices,
                    round_to_uint8,
                    scale_intensity,
                    scale_modality,
                    scale_segmentation,
)
from .splits import (
                    AUTHORS_SPLIT_FILES,
                    SPLITS,
                    SUBJECT_ORDER_COLUMNS,
                    authors_split_dir,
                    authors_split_file,
                    read_subject_order,
                    split_patients,
                    split_subjects,
                    split_subjects_by_list,
)
from .store import NpyAppender, load_split, split_counts, stream_units
