"""How the settings are resolved: the schema's default, then the YAML files
of ``configs/`` and the command line, later wins (see :mod:`helpers.config`).
Where each value came from is tracked here, since no library knows about
our layers.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..common import repo_root, work_from_checkout
from .schema import (
    COMMON,
    COMMON_KEYS,
    SCHEMAS,
    CompareSettings,
    ConfigError,
    SettingError,
    as_dict,
    field_names,
)

# ==========================================================================
# Layers: which file says what
# ==========================================================================

@dataclasses.dataclass
class Layer:
    """One source of overrides: ``{section: {key: value}}`` and its name."""

    source: str
    values: dict


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def parse_overrides(items: Sequence[str]) -> dict:
    """``["train_diffusion.max_steps=10", "common.seed=3"]`` → nested dict
    (values parsed as YAML, so numbers, lists and null work)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        section, name = key.split(".", 1)
        try:
            out.setdefault(section, {})[name] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({err})") from err
    return out


def _check_layer(layer: Layer, sections: Sequence[str]) -> None:
    for section, values in layer.values.items():
        if section not in (COMMON, *sections):
            raise ConfigError(
                f"{layer.source}: unknown section '{section}'; allowed: {', '.join((COMMON, *sections))}")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{layer.source}: section '{section}' must be a mapping of keys, got {values!r}")
        allowed = COMMON_KEYS if section == COMMON else field_names(section)
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{layer.source}: unknown key{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(f'{section}.{k}' for k in unknown)}; the keys of '{section}' are: "
                f"{', '.join(allowed)}")


def config_layers(dataset: str, profile: str, root: Path | None = None) -> list[Layer]:
    """The dataset file, then the profile's layers (:func:`profile_layers`)."""
    root = root or repo_root()
    dataset_file = root / "configs" / f"{dataset}.yaml"
    if not dataset_file.is_file():
        known = sorted(p.stem for p in (root / "configs").glob("*.yaml"))
        raise ConfigError(f"No configuration {dataset_file} (known datasets: {', '.join(known)})")
    base = read_yaml(dataset_file)
    own = base.pop("profiles", None) or {}
    if not isinstance(own, Mapping) or not all(isinstance(v, Mapping) or v is None for v in own.values()):
        raise ConfigError(f"{dataset_file}: 'profiles' must map profile names to sections")
    unknown = sorted(set(own) - set(available_profiles(root)))
    if unknown:
        raise ConfigError(f"{dataset_file}: profiles.{unknown[0]} is not a profile "
                          f"(profiles: {', '.join(available_profiles(root))})")
    return [Layer(_relative(dataset_file, root), base), *profile_layers(profile, root, dataset_file, own)]


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def profile_layers(profile: str, root: Path, dataset_file: Path, own: Mapping,
                   derived: tuple[str, ...] = ()) -> list[Layer]:
    """A profile's layers, later wins: the layers of the profile it is
    ``based_on`` (if it names one), the profile file, and the dataset file's
    section for it (``profiles.<profile>``). So a profile that differs from
    another in a few settings says only those, and inherits the dataset's
    section for its base too (the reference profile is the cpu profile,
    trained longer)."""
    profile_file = root / "configs" / "profiles" / f"{profile}.yaml"
    said_by = f" (based_on in configs/profiles/{derived[-1]}.yaml)" if derived else ""
    if not profile_file.is_file():
        raise ConfigError(f"No profile {profile_file}{said_by} (known profiles: {', '.join(available_profiles(root))})")
    values = read_yaml(profile_file)
    base = values.pop("based_on", None)
    layers: list[Layer] = []
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{_relative(profile_file, root)}: based_on must name one profile, got {base!r}")
        if base in (*derived, profile):
            chain = " → ".join((*derived, profile, base))
            raise ConfigError(f"{_relative(profile_file, root)}: based_on: {base} makes a cycle ({chain})")
        layers = profile_layers(base, root, dataset_file, own, (*derived, profile))
    return [*layers, Layer(_relative(profile_file, root), values),
            Layer(f"{_relative(dataset_file, root)} profiles.{profile}", dict(own.get(profile) or {}))]


def available_profiles(root: Path | None = None) -> list[str]:
    root = root or repo_root()
    return sorted(p.stem for p in (root / "configs" / "profiles").glob("*.yaml"))


def available_datasets(root: Path | None = None) -> list[str]:
    root = root or repo_root()
    return sorted(p.stem for p in (root / "configs").glob("*.yaml"))


# ==========================================================================
# Resolution
# ==========================================================================

@dataclasses.dataclass
class Resolved:
    """The settings of every step, and where each value came from."""

    dataset: str
    profile: str
    settings: dict[str, Any]              # section → schema instance
    sources: dict[str, dict[str, str]]    # section → key → source ("default", a file, "--set")

    def __getitem__(self, section: str):
        return self.settings[section]

    def as_dicts(self) -> dict[str, dict]:
        return {section: as_dict(s) for section, s in self.settings.items()}

    def describe(self, sections: Sequence[str] | None = None) -> str:
        """Every resolved value with its source, one section after another."""
        lines = [f"# dataset {self.dataset}, profile {self.profile}; 'default': the schema in helpers/config/schema.py"]
        for section in sections or self.settings:
            values = as_dict(self.settings[section])
            lines.append(f"{section}:")
            width = max(len(k) for k in values) + 1
            for key, value in values.items():
                shown = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
                shown = shown.removesuffix("\n...").removesuffix(" ...")
                lines.append(f"  {key + ':':<{width}} {shown:<24} # {self.sources[section][key]}")
        return "\n".join(lines)


def build(section: str, values: Mapping[str, Any], sources: Mapping[str, str] | None = None):
    """The schema instance of ``section`` from ``values``; a wrongly typed
    value is a ConfigError naming the key and the file it came from."""
    schema = SCHEMAS[section]
    unknown = sorted(set(values) - set(field_names(section)))
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; "
                          f"the keys of '{section}' are: {', '.join(field_names(section))}")
    try:
        return schema(**values)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            cause = (e.get("ctx") or {}).get("error")
            if isinstance(cause, SettingError):  # a check across keys, in the schema's __post_init__
                key, value, msg = cause.key, cause.value, cause.allowed
            else:
                key = str(e["loc"][0]) if e.get("loc") else "?"
                value, msg = values.get(key), e["msg"]
            where = (sources or {}).get(key, "the given settings")
            problems.append(f"{where}: {section}.{key} = {value!r}: {msg}")
        raise ConfigError("; ".join(problems)) from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{section} ({', '.join(sorted(set((sources or {}).values())))}): {err}") from None


def resolve_layers(layers: Sequence[Layer], sections: Sequence[str] | None = None,
                   dataset: str = "", profile: str = "") -> Resolved:
    """Apply ``layers`` in order on top of the schemas' defaults."""
    sections = list(sections or [s for s in SCHEMAS if s != "compare"])
    for layer in layers:
        _check_layer(layer, list(SCHEMAS))
    settings, sources = {}, {}
    for section in sections:
        values: dict[str, Any] = {}
        where = {name: "default" for name in field_names(section)}
        for layer in layers:
            for part in (COMMON, section):
                for key, value in (layer.values.get(part) or {}).items():
                    if key in where:
                        values[key] = copy.deepcopy(value)
                        where[key] = layer.source if part == section else f"{layer.source} ({COMMON})"
        settings[section] = build(section, values, where)
        sources[section] = where
    check_across_steps(settings, sources)
    return Resolved(dataset, profile, settings, sources)


def check_across_steps(settings: Mapping[str, Any], sources: Mapping[str, Mapping[str, str]]) -> None:
    """The ranges that depend on another step's settings: the image size
    that step 01 writes against the diffusion UNet's levels, its attention
    resolutions and the sampler's steps. One line per problem, naming the
    key and where its value came from."""
    problems = []

    def require(ok: bool, section: str, key: str, allowed: str) -> None:
        if not ok:
            value = getattr(settings[section], key)
            problems.append(f"{sources[section][key]}: {section}.{key} = {value!r}: {allowed}")

    prepare, diffusion, sample = (settings.get(s) for s in ("prepare_data", "train_diffusion", "sample"))
    if prepare is not None and any(v != "default" for v in sources["prepare_data"].values()):
        for key, allowed in prepare.data_problems():  # the schema's defaults alone: the authors' BraTS counts
            require(False, "prepare_data", key, allowed)
    if prepare is not None and diffusion is not None:
        size, levels = prepare.image_size, len(diffusion.block_out_channels)
        maps = [size // 2**i for i in range(levels)]
        require(size % 2 ** (levels - 1) == 0 and maps[-1] >= 1, "train_diffusion", "block_out_channels",
                f"at most {size.bit_length()} levels: each level halves the {size}² images "
                f"(prepare_data.image_size)")
        require(all(r in maps for r in diffusion.attention_resolutions), "train_diffusion", "attention_resolutions",
                f"feature-map sizes of this UNet: {maps} ({size}² images, {levels} levels)")
    if diffusion is not None and sample is not None and sample.diffusion_inference_steps is not None:
        require(sample.diffusion_inference_steps <= diffusion.num_train_timesteps, "sample",
                "diffusion_inference_steps", f"at most train_diffusion.num_train_timesteps="
                f"{diffusion.num_train_timesteps}")
    if problems:
        raise ConfigError("; ".join(problems))


def resolve(dataset: str, profile: str, overrides: Mapping | None = None, raw_dir: str | None = None,
            root: Path | None = None) -> Resolved:
    """The settings of every step of ``dataset`` under ``profile``."""
    layers = config_layers(dataset, profile, root)
    if raw_dir is not None:
        layers.append(Layer("--data", {"prepare_data": {"raw_dir": str(Path(raw_dir).resolve())}}))
    if overrides:
        layers.append(Layer("--set", dict(overrides)))
    return resolve_layers(layers, dataset=dataset, profile=profile)


def step_settings(section: str, dataset: str, profile: str, settings: Mapping | None = None):
    """A notebook's typed settings: the ``settings`` dict that ``./runall.sh``
    injected, or — when a reader runs the notebook by hand — those of
    ``dataset`` and ``profile`` resolved from ``configs/``."""
    if settings is None:
        if section == "compare":
            return CompareSettings()
        return resolve(dataset, profile)[section]
    return build(section, dict(settings), {k: "the injected settings" for k in settings})


def default_profile() -> str:
    """The profile ``./runall.sh`` picks without ``--profile``: gpu where
    CUDA is available, else cpu."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


def runall_defaults(dataset: str, profile: str | None = None,
                    results_dir: str | None = None) -> tuple[str, str, str]:
    """For a notebook opened by hand (JupyterLab): what ``./runall.sh DATASET``
    would inject — the default profile and ``results/<dataset>`` (or
    ``$STUDY_RESULTS/<dataset>``) — and work from the checkout's root as
    ``./runall.sh`` does, so the notebook reads and writes the same files.
    Values already given (injected by the runner) are kept."""
    work_from_checkout()
    profile = profile or default_profile()
    results_dir = results_dir or str(Path(os.environ.get("STUDY_RESULTS") or "results") / dataset)
    return dataset, profile, results_dir
