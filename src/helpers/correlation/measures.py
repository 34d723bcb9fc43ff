"""Measures of one engine call: channel groups correlated in one pass.

A group ("measure") is a choice of channels flattened into one vector, e.g.
one modality alone (the paper's measure) or all channels jointly. The engine
reads each image block once and cuts every group's rows from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .io import ImageSet, _parse_channels


@dataclass
class _Group:
    """One measure of an engine call: the channels (indices into the sets'
    selected channels; ``None`` = all of them) flattened into one vector."""

    name: str
    channels: list[int] | None
    dim: int
    delta: float = 0.0

    def rows(self, raw3):
        """``(n, C, P)`` -> this group's ``(n, D_g)`` (a view where possible)."""
        n = raw3.shape[0]
        ch = self.channels
        if ch is None:
            return raw3.reshape(n, -1)
        if len(ch) == 1:
            return raw3[:, ch[0]]
        if ch == list(range(ch[0], ch[0] + len(ch))):
            return raw3[:, ch[0]:ch[0] + len(ch)].reshape(n, -1)
        return raw3[:, ch].reshape(n, -1)



@dataclass
class _GroupOutput:
    """What one group of an engine call fills in (host arrays)."""

    index: np.ndarray
    correlation: np.ndarray
    constant: np.ndarray
    train_constant: np.ndarray
    stats: dict


def _resolve_groups(groups, syn: ImageSet, tra: ImageSet) -> list[_Group]:
    """``{name: channel selection}`` -> :class:`_Group` list (selections as in
    :func:`open_images`, relative to the sets' selected channels)."""
    if groups is None:
        groups = {"all": None}
    if not isinstance(groups, Mapping) or not groups:
        raise ValueError(f"groups must be a non-empty mapping of name -> channels, not {groups!r}")
    named = syn if syn.channel_names else tra
    names = named.selected_names if named.channel_names else None
    n_ch = syn.n_channels
    per_channel = syn.dim // n_ch
    out = []
    for name, selection in groups.items():
        if isinstance(selection, (list, tuple)) and len(selection) == 0:
            raise ValueError(f"group {name!r} selects no channel")
        idx = _parse_channels(selection, n_ch, names)
        out.append(_Group(str(name), idx, per_channel * (n_ch if idx is None else len(idx))))
    return out
