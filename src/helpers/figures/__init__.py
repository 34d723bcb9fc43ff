"""Plots and tables from result files (seaborn/matplotlib).

It reads arrays and tables that other steps wrote; it never runs a model.

Layout read (all under ``results_dir = results/<dataset>/``, see the
README): ``data/`` (step 01), ``stylegan/loss_log.csv`` (02),
``diffusion/loss_log.csv`` (03), ``samples/`` (04) and ``correlation/`` (05).

Measures. Step 05 correlates each modality alone (the paper's measure), all
channels as one vector (ours) and the label map apart (see
:mod:`helpers.audit`), one folder per measure under ``correlation/``.
Every loader, table and figure of one measure takes ``measure=``; ``None``
means the *headline* measure named in ``correlation/summary.json``. The
finding sentence and the cross-dataset comparison use the headline by default, and
:func:`measures` lists the measures headline first.

Modules, one per kind of output: :mod:`.results` (loaders), :mod:`.style`
(names, colours, labels), :mod:`.output` (saving, Markdown), :mod:`.tables`,
:mod:`.text` (the finding sentence), :mod:`.distributions` (figure 1),
:mod:`.top_matches` (figure 2), :mod:`.images` (sample grids, montages),
:mod:`.curves` (training curves) and :mod:`.compare` (across datasets);
the size sweep's figures are :mod:`helpers.sweep_figures`. Every name is re-exported here, so
``from helpers import figures; figures.<name>`` reaches all of them.
"""

from .compare import collect_summaries, compact_table, compare_table, compare_text, one_measure, plot_compare
from .curves import plot_loss_log, plot_training_curves
from .distributions import max_correlations, plot_max_correlation, plot_max_correlation_by_measure
from .fit import memorization_against_fit
from .images import montage, plot_sample_grids
from .method import plot_method, plot_method_of
from .output import (
                     folded,
                     links_markdown,
                     markdown_table,
                     measure_names,
                     outputs_markdown,
                     params_markdown,
                     remove_stale_outputs,
                     save_figure,
                     save_measure_figure,
                     save_measure_table,
                     save_table,
                     settings_markdown,
)
from .results import (
                     ResultMissing,
                     available,
                     channel_index,
                     headline,
                     load_baseline,
                     load_control,
                     load_exceedances,
                     load_images,
                     load_index,
                     load_leakage,
                     load_loss_log,
                     load_matches,
                     load_meta,
                     load_most_matched,
                     load_summary,
                     load_thresholds,
                     load_topk,
                     measure_files,
                     measure_folder,
                     measure_info,
                     measures,
                     missing_text,
                     model_files,
                     model_status,
                     producer,
                     result_file,
                     shown_channel,
)
from .story import most_copy_like, plot_story, plot_story_of
from .style import (
                     BASELINE,
                     COLOURS,
                     CONTROL,
                     DISPLAY_NAMES,
                     MODELS,
                     THRESHOLD_NAMES,
                     display_name,
                     interval_columns,
                     measure_label,
                     threshold_label,
)
from .tables import (
                     measures_table,
                     memorization_table,
                     memorization_tables,
                     most_copied_table,
                     table_groups,
                     table_title,
                     thresholds_by_measure,
                     thresholds_table,
)
from .text import finding_text
from .top_matches import intensity_histogram, plot_top_matches, select_matches

__all__ = [
    "memorization_against_fit", "most_copy_like", "plot_method", "plot_method_of", "plot_story", "plot_story_of",
    "BASELINE", "COLOURS", "CONTROL", "DISPLAY_NAMES", "MODELS", "THRESHOLD_NAMES", "ResultMissing",
    "available", "channel_index", "collect_summaries", "compact_table", "compare_table", "compare_text", "display_name",
    "finding_text", "folded", "headline", "intensity_histogram", "interval_columns", "load_baseline", "load_control",
    "load_exceedances", "load_images", "load_index", "load_leakage", "load_loss_log", "load_matches", "load_meta",
    "links_markdown", "load_most_matched", "load_summary", "load_thresholds", "load_topk", "markdown_table",
    "max_correlations", "measure_files", "measure_folder", "measure_info", "measure_label", "measure_names", "measures",
    "measures_table", "memorization_table", "memorization_tables", "missing_text", "model_files", "model_status",
    "montage", "most_copied_table", "one_measure", "outputs_markdown", "params_markdown", "remove_stale_outputs", "plot_compare",
    "plot_loss_log", "plot_max_correlation", "plot_max_correlation_by_measure", "plot_sample_grids",
    "plot_top_matches", "plot_training_curves", "producer", "result_file", "save_figure",
    "save_measure_figure", "save_measure_table", "save_table", "settings_markdown", "select_matches", "shown_channel",
    "table_groups", "table_title", "threshold_label", "thresholds_by_measure", "thresholds_table",
]
