"""The memorization audit: measures, tables and figures-of-merit around the
correlation engine (:mod:`helpers.correlation`), one audit path for step 05
(:func:`audit_study`) and the command

    python -m helpers.audit --synthetic PATH --training PATH [--test PATH]
        [--channels all|each|C ...] [--headline C] [--top-k K] [--out DIR]
        [--backend auto|numpy|cupy] [--control N]

where PATH is a folder of PNG/JPEG images or an ``.npy`` array (N×C×H×W,
N×H×W). Both write the same layout and the same ``summary.json``.

Measures (:mod:`.measures`): each image channel alone (the paper's
measure), all channels as one vector (``all``, this study's), and a label
map (``seg``) reported apart and never the headline. The headline measure
(``headline_channel``; default the first image channel) is the one the
finding sentence, the README figure and the comparisons use. All measures
come from one engine pass per image set.

Layout written under ``out`` (``results/<dataset>/correlation/`` in step 05)::

    summary.json                   headline, measures (headline first), by_measure
    <measure>/matches_<model>.csv  best match per synthetic image (+ adjacent slices)
    <measure>/topk_<model>.csv     the top-k
    <measure>/most_matched_<model>.csv
    <measure>/baseline.csv         held-out real images vs training
    <measure>/thresholds.csv       fixed and baseline-percentile thresholds
    <measure>/exceedances.csv      images above each threshold, Wilson 95 % intervals
    <measure>/leakage.csv          training subjects with an image matched above it
    <measure>/control_matches.csv  planted-copy positive control

(the command calls its synthetic set ``synthetic`` and writes leakage,
adjacent slices and most-matched tables only where subjects are known).

Modules: :mod:`.runner` (the audit path), :mod:`.tables`, :mod:`.control`,
:mod:`.measures`, :mod:`.study_data` (reading a results folder),
:mod:`.result` (:class:`StudyAudit`) and :mod:`.cli` (the command). Like the
engine, this package imports neither torch nor CuPy.
"""

from .cli import COMMAND_DEFAULTS, SYNTHETIC_NAME, audit, channels_arg, command_settings, main
from .control import CONTROL_KINDS, control_summary, control_table, make_control, scored_control
from .measures import (
                       JOINT,
                       JOINT_DESCRIPTION,
                       LABEL_CHANNELS,
                       Measure,
                       is_label_channel,
                       measure_summary,
                       study_measures,
)
from .result import StudyAudit
from .runner import EnginePass, RunLog, audit_study, engine_passes, load_audit, run_audit, run_engine
from .study_data import StudyData, available_models, load_samples, load_study_data
from .tables import (
                       BASELINE_NAME,
                       CONTROL_NAME,
                       MATCH_COLUMNS,
                       add_adjacent_slices,
                       baseline_table,
                       comparison_groups,
                       compute_thresholds,
                       exceedance_table,
                       group_summary,
                       leakage_table,
                       match_table,
                       most_matched,
                       neighbour_slices,
                       quantiles,
                       reported_interval,
                       thresholds_table,
                       topk_table,
                       valid_correlations,
                       wilson_interval,
)

__all__ = [
    "BASELINE_NAME", "COMMAND_DEFAULTS", "CONTROL_KINDS", "CONTROL_NAME", "JOINT", "JOINT_DESCRIPTION",
    "LABEL_CHANNELS", "MATCH_COLUMNS", "Measure", "RunLog", "SYNTHETIC_NAME", "StudyAudit", "StudyData",
    "EnginePass", "add_adjacent_slices", "audit", "audit_study", "engine_passes", "load_audit",
    "available_models", "baseline_table", "channels_arg", "command_settings",
    "comparison_groups", "compute_thresholds", "control_summary", "control_table", "exceedance_table",
    "group_summary", "is_label_channel", "leakage_table", "load_samples", "load_study_data", "main", "make_control",
    "match_table", "measure_summary", "most_matched", "neighbour_slices", "quantiles", "reported_interval",
    "run_audit", "run_engine", "scored_control", "study_measures", "thresholds_table", "topk_table",
    "valid_correlations", "wilson_interval",
]
