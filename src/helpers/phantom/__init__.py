"""The embedded phantom cohort: deterministic look-alike RAW data in the exact
on-disk formats of BraTS (2020 and 2021 layouts) and of the Kermany chest
x-ray set.

Why: the real sets need a registration and cannot be downloaded by the
program, yet every step (and every test) must run end to end. The phantom
writes files that the data loaders read exactly like real data, so the
loaders are exercised for real, not mocked.

* :mod:`.brain` — BraTS subjects from the MNI152 template (nilearn, offline);
* :mod:`.chest` — procedurally drawn chest films with Kermany file names;
* :mod:`.cache` — ``ensure_phantom``: generate once per parameter set, reuse after.

The public names are re-exported here (``from helpers import phantom;
phantom.make_brats_cohort(...)``). To replace a private helper in a test,
patch it in its own module (``phantom.brain._brats_subject``).
"""

from __future__ import annotations

from .brain import (
                    BRATS2020_FOLDER,
                    BRATS_FILES,
                    BRATS_MODALITIES,
                    BRATS_SHAPE,
                    DEFAULT_BRATS_SUBJECTS,
                    ENHANCING,
                    NECROTIC,
                    OEDEMA,
                    SEG_LABELS,
                    brats_affine,
                    brats_subject_id,
                    make_brats_cohort,
)
from .cache import KINDS, MARKER, PHANTOM_VERSION, ensure_phantom, locate_raw_data, phantom_params
from .chest import CXR_CLASSES, CXR_FOLDER, DEFAULT_CXR_NORMAL, DEFAULT_CXR_PNEUMONIA, cxr_patient_id, make_cxr_cohort
