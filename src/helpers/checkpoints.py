"""Training state to and from safetensors, never pickle.

A checkpoint is one ``.safetensors`` file: every tensor of a nested state
(model and EMA weights, optimizer moments, RNG states) is stored under its
path in the structure, and the structure itself (dicts, lists, numbers,
strings) travels as JSON in the file's metadata. Loading therefore runs no
code from the file. Checkpoints are written atomically and the last K kept,
so a killed run resumes from the newest complete one.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .common import atomic_path

_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_NDARRAY = "__ndarray__"
_NAME = re.compile(r"^step_(\d{9})\.safetensors$")


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {_TENSOR: key}
    if isinstance(obj, np.ndarray):
        key = prefix or "root"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {_NDARRAY: key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint keys must be str or int, got {k!r}")
            # int keys (optimizer state) are tagged so they come back as ints
            tag = f"i:{k}" if isinstance(k, int) else f"s:{k}"
            out[tag] = _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}" if prefix else str(i), tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint (at {prefix or 'root'})")


def _unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if _TENSOR in skeleton:
            return tensors[skeleton[_TENSOR]]
        if _NDARRAY in skeleton:
            return tensors[skeleton[_NDARRAY]].numpy()
        if _TUPLE in skeleton:
            return tuple(_unflatten(v, tensors) for v in skeleton[_TUPLE])
        out = {}
        for tag, v in skeleton.items():
            kind, key = tag.split(":", 1)
            out[int(key) if kind == "i" else key] = _unflatten(v, tensors)
        return out
    if isinstance(skeleton, list):
        return [_unflatten(v, tensors) for v in skeleton]
    return skeleton


def save_state(path: str | Path, state: Any) -> Path:
    """Write a nested state (tensors, arrays, numbers, strings, lists,
    dicts, tuples) to one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    # safetensors refuses tensors that share memory; give each its own copy
    seen: set[int] = set()
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            tensors[key] = t.clone()
        seen.add(ptr)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"skeleton": json.dumps(skeleton)})
    return Path(path)


def load_state(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """Read back what :func:`save_state` wrote."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except Exception as err:  # re-raised with the file's name
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({err})") from err
    if "skeleton" not in metadata:
        raise ValueError(f"{path}: safetensors file has no 'skeleton' metadata; not written by save_state")
    return _unflatten(json.loads(metadata["skeleton"]), tensors)


# --------------------------------------------------------------------------
# Random number generator states
# --------------------------------------------------------------------------

def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": py[0], "state": list(py[1]), "gauss": py[2]},
        "numpy": {"kind": np_state[0], "keys": np_state[1], "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


# --------------------------------------------------------------------------
# A folder of numbered checkpoints
# --------------------------------------------------------------------------

def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:09d}.safetensors"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(folder: str | Path, step: int, state: Any, keep_checkpoints: int = 3) -> Path:
    """Write ``state`` as checkpoint ``step`` and delete all but the newest
    ``keep_checkpoints`` checkpoints in ``folder``."""
    path = save_state(checkpoint_path(folder, step), state)
    for _, old in list_checkpoints(folder)[:-keep_checkpoints] if keep_checkpoints > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> tuple[int, Any] | None:
    """The newest readable checkpoint in ``folder`` as ``(step, state)``, or
    None if there is none. An unreadable newest file (a disk that filled up)
    is reported and the one before it used."""
    for step, path in reversed(list_checkpoints(folder)):
        try:
            return step, load_state(path, device)
        except ValueError as err:
            print(f"warning: skipping unreadable checkpoint: {err}")
    return None


def tensor_digest(path: str | Path, prefix: str | None = None) -> str:
    """SHA-256 of a safetensors file's tensors (names and bytes, in name
    order), or of those under ``prefix`` (e.g. ``"G_ema"``): the same
    weights give the same digest, whatever the metadata and whatever the
    unseeded global generator states a training checkpoint also holds."""
    import hashlib
    import json
    import struct

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_size))
        names = sorted(k for k in header if k != "__metadata__"
                       and (prefix is None or k == prefix or k.startswith(prefix + ".")))
        if not names:
            raise ValueError(f"{path}: no tensor under {prefix!r} in this checkpoint")
        for name in names:
            begin, end = header[name]["data_offsets"]
            handle.seek(8 + header_size + begin)
            digest.update(name.encode() + b"\0" + handle.read(end - begin))
    return digest.hexdigest()
