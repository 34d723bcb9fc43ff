"""Every setting of every step, with its one default, and how the YAML
files override it.

Each step has one typed schema here (a pydantic dataclass). Its defaults are
the authors' settings where the paper or their code states them; the files
in ``configs/`` only override them, in this order (later wins):

1. the schema's default (``schema.py``),
2. ``configs/<dataset>.yaml``,
3. ``configs/profiles/<profile>.yaml``,
4. the dataset file's own ``profiles: {<profile>: ...}`` section,
   (a profile ``based_on`` another gets that one's 3 and 4 first),
5. ``./runall.sh --data DIR`` (``prepare_data.raw_dir``) and ``--set SECTION.KEY=VALUE``.

A key that no schema knows, in any layer, is an error that names the key,
the file it came from and the keys that are allowed; a value of the wrong
type is an error that names its file too. Nothing is silently dropped.

The schemas are in :mod:`helpers.config.schema` (why pydantic: strict type
checks with precise messages, from plain dataclasses); the layers in
:mod:`helpers.config.layers`.

This module imports neither torch nor CuPy: ``--show-params`` and the
correlation audit start quickly.
"""

from .layers import (
    Layer,
    Resolved,
    available_datasets,
    available_profiles,
    build,
    config_layers,
    default_profile,
    parse_overrides,
    read_yaml,
    resolve,
    resolve_layers,
    runall_defaults,
    step_settings,
)
from .schema import (
    COMMON,
    COMMON_KEYS,
    FINDING_THRESHOLD,
    MEMORY_BUDGET_GB,
    MODELS,
    SCHEMAS,
    CompareSettings,
    ConfigError,
    CorrelateSettings,
    FiguresSettings,
    ModelName,
    PrepareDataSettings,
    SampleSettings,
    StepSettings,
    TrainDiffusionSettings,
    TrainStyleGANSettings,
    as_dict,
    field_names,
)
