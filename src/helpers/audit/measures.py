"""Measures: which pixels of an image are correlated.

The authors correlated one grayscale modality at a time; this study adds all
channels as one vector. A label map (``seg``) is correlated too, since a
copied label map is a copy, but reported apart and never the headline: it is
all zero on slices without tumour, and r of a few labels is not comparable
with r of intensities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: channels that hold label maps, not intensities (compared lower-case)
LABEL_CHANNELS: tuple[str, ...] = ("seg",)
#: the measure name of all channels as one vector
JOINT = "all"
JOINT_DESCRIPTION = "all channels as one vector (this study's measure, not the paper's)"


@dataclass(frozen=True)
class Measure:
    """One choice of pixels to correlate: a channel alone, or several as one vector.

    ``name`` is the folder and key (the channel name in lower case, or
    ``all``); ``channels`` the data's channel names, ``index`` their
    positions; ``kind`` is ``modality`` (the paper's measure), ``joint``
    (ours) or ``label_map`` (reported apart, never a headline)."""

    name: str
    channels: tuple[str, ...]
    index: tuple[int, ...]
    kind: str
    description: str

    @property
    def label_map(self) -> bool:
        return self.kind == "label_map"

    def info(self, headline: str | None = None) -> dict:
        return {"measure": self.name, "channels": list(self.channels), "channel_index": list(self.index),
                "kind": self.kind, "label_map": self.label_map, "headline": self.name == headline,
                "description": self.description}


def is_label_channel(name: str) -> bool:
    return str(name).lower() in LABEL_CHANNELS


def _channel_position(token, names: Sequence[str], what: str = "channel") -> int:
    """Index of a channel given by name (any case) or index."""
    if isinstance(token, (int, np.integer)) or (isinstance(token, str) and token.lstrip("-").isdigit()):
        i = int(token)
        if not -len(names) <= i < len(names):
            raise ValueError(f"{what} {i} is out of range for {len(names)} channel(s): {', '.join(names)}")
        return i % len(names)
    lower = [str(n).lower() for n in names]
    if str(token).lower() not in lower:
        raise ValueError(f"{what} {token!r} is not one of the data's channels: {', '.join(map(str, names))}")
    return lower.index(str(token).lower())


def study_measures(channel_names: Sequence[str], channels=None, *, each: bool = True, joint: bool = True,
                   headline: str | None = None) -> tuple[list[Measure], str]:
    """The measures to compute and the headline's name, headline first.

    ``channel_names``: the data's channels (e.g. T1, T2, T1ce, FLAIR, Seg).
    ``channels``: ``None``/``"all"`` (every channel) or the names/indices to
    correlate. ``each``: one measure per selected channel; ``joint``: also
    the selected channels as one vector (``all``; skipped when one channel
    is selected and ``each`` is on, since it would be the same measure).
    ``headline``: a selected image channel (any case), ``all`` when the
    joint measure is computed, or ``None`` for the first image channel (the
    joint measure when no per-channel one exists). A label map (``seg``) is
    refused as headline. Order: headline, the other image channels in data
    order, the joint measure, label maps.
    """
    names = [str(n) for n in channel_names]
    if channels is None or (isinstance(channels, str) and channels.lower() == "all"):
        chosen = list(range(len(names)))
    else:
        tokens = [channels] if isinstance(channels, (str, int, np.integer)) else list(channels)
        if not tokens:
            raise ValueError("channels selects no channel (use null for all)")
        chosen = [_channel_position(t, names) for t in tokens]
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"channels {list(tokens)} repeats a channel")
        chosen.sort()
    measures: list[Measure] = []
    if each:
        for i in chosen:
            label = is_label_channel(names[i])
            measures.append(Measure(
                names[i].lower(), (names[i],), (i,), "label_map" if label else "modality",
                f"{names[i]} alone, a label map: reported apart, never the headline" if label
                else f"{names[i]} alone (the paper's measure: one modality at a time)"))
    if joint and not (each and len(chosen) == 1):
        every = len(chosen) == len(names)
        desc = JOINT_DESCRIPTION if every else \
            f"channels {', '.join(names[i] for i in chosen)} as one vector (this study's measure, not the paper's)"
        measures.append(Measure(JOINT if every else "+".join(names[i].lower() for i in chosen),
                                tuple(names[i] for i in chosen), tuple(chosen), "joint", desc))
    if not measures:
        raise ValueError("no measure to compute: set each and/or joint")
    by_name = {m.name: m for m in measures}
    allowed = [m.name for m in measures if not m.label_map]
    if headline is None or headline == "":
        image = [m for m in measures if m.kind == "modality"]
        pick = image[0] if image else next((m for m in measures if m.kind == "joint"), None)
        if pick is None:
            raise ValueError(f"no image channel among {', '.join(names[i] for i in chosen)} to be the headline: "
                             "label maps are never the headline")
    else:
        key = str(headline).lower()
        pick = by_name.get(key)
        if pick is None and key == JOINT:  # the joint measure of a channel subset
            pick = next((m for m in measures if m.kind == "joint"), None)
        if pick is None and key.lstrip("-").isdigit() and -len(names) <= int(key) < len(names):
            pick = by_name.get(names[int(key)].lower())  # a channel index
        if pick is None or pick.label_map:
            why = (f"{headline!r} is a label map (all zero on slices without tumour), not an image modality"
                   if is_label_channel(key) else f"{headline!r} is not one of the measures computed")
            raise ValueError(f"headline_channel {why}; choose one of: {', '.join(allowed) or '(none)'}")
    order = {"modality": 1, "joint": 2, "label_map": 3}
    ordered = sorted(measures, key=lambda m: (m.name != pick.name, order[m.kind]))
    return ordered, pick.name


def measure_summary(summary: Mapping, measure: str | None = None) -> dict:
    """One measure of ``summary.json`` as a flat dict with the keys of the
    single-measure summary (``dataset``, ``channels``, ``thresholds``,
    ``baseline``, ``models``, ``control``, ...) plus ``measure``, ``kind``,
    ``description`` and ``headline``. ``measure=None``: the headline."""
    name = summary["headline"] if measure is None else str(measure).lower()
    if name not in summary["by_measure"]:
        raise ValueError(f"summary.json has no measure {measure!r}; measures: {', '.join(summary['measures'])}")
    shared = {k: v for k, v in summary.items() if k not in ("by_measure", "measures", "headline", "channels")}
    return {**shared, "data_channels": summary.get("channels", []), **summary["by_measure"][name]}

