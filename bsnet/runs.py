"""Run directories: the resolved config, metrics, checkpoints (safetensors + JSON, no pickle) and resume.

Layout of a search run:

    config.yaml          the fully resolved configuration (`bsnet search --config` reruns it)
    metrics.jsonl        one JSON object per finished epoch
    checkpoints/         epoch-NNNN.{safetensors,json} (the two newest) and best.{safetensors,json}
    architecture.json    written when the search has finished
    weights.safetensors  the found network's fine-tuned weights (live nodes only)
    search.png, architecture.png
    final/               `bsnet train`: model.safetensors, metrics.jsonl, result.json (built in final.partial/)
    export/, eval.json   `bsnet export` and `bsnet eval`
    .bsnet-run           the marker: what bsnet wrote here (`bsnet.rundir`, with the lock, .bsnet-lock)
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load, save_file

CHECKPOINT_FORMAT = 1

# Test-only fault injection: the process kills itself (SIGKILL) when it reaches the named point, e.g.
# `step:37` (before global step 37), `checkpoint:tensors:epoch-0002` (tensors written to a temporary file, not
# yet in place) or `checkpoint:json:epoch-0002` (tensors in place, their JSON not yet written).
KILL_ENV = "BSNET_TEST_KILL_AT"


def kill_point(point: str) -> None:
    if os.environ.get(KILL_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (occupied, missing, damaged)."""


# ---- atomic writes ------------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, then rename: a crash never leaves a half-written `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash, and anything after it, is dropped
    return out


def truncate_metrics(path: Path, epochs: int) -> None:
    """Keep the records of the first `epochs` epochs only, so that a resumed run logs each epoch once."""
    kept = [r for r in read_metrics(path) if r.get("epoch", 0) < epochs]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


# ---- checkpoints: nested state with tensors -> safetensors + JSON skeleton --------------------------
def _flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, tensors, f"{prefix}/{k}")] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        kind = "__tuple__" if isinstance(obj, tuple) else "__list__"
        return {kind: [_flatten(v, tensors, f"{prefix}/{i}") for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {prefix}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `_flatten`; ValueError for a skeleton `_flatten` cannot have written."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            if not isinstance(obj["__tensor__"], str) or obj["__tensor__"] not in tensors:
                raise ValueError(f"it names a tensor the file does not hold: {str(obj['__tensor__'])[:60]!r}")
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            items = obj["__dict__"]
            if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 and
                                                      isinstance(i[0], (str, int, float, bool)) for i in items):
                raise ValueError("a __dict__ entry is not a list of [key, value] pairs")
            return {k: _unflatten(v, tensors) for k, v in items}
        for kind, make in (("__tuple__", tuple), ("__list__", list)):
            if kind in obj:
                if not isinstance(obj[kind], list):
                    raise ValueError(f"a {kind} entry is not a list")
                return make(_unflatten(v, tensors) for v in obj[kind])
    return obj


def save_checkpoint(directory: Path, name: str, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """`name.safetensors` (tensors) then `name.json` (the rest, `meta`, and the tensors' checksum)."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, "s")
    blob_path = directory / f"{name}.safetensors"
    tmp = blob_path.with_name(blob_path.name + ".tmp")
    save_file(tensors, str(tmp))
    with open(tmp, "rb+") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
        os.fsync(f.fileno())
    kill_point(f"checkpoint:tensors:{name}")
    os.replace(tmp, blob_path)
    kill_point(f"checkpoint:json:{name}")
    atomic_write_text(directory / f"{name}.json", json.dumps({"meta": meta, "sha256": digest, "state": skeleton}))


def load_checkpoint(directory: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta); RunDirError when a file is missing, truncated or does not match its checksum."""
    js, blob = directory / f"{name}.json", directory / f"{name}.safetensors"
    try:
        doc = json.loads(js.read_text())
        data = blob.read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        raise RunDirError(f"checkpoint {js.with_suffix('')} cannot be read: {why}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("meta", {}), dict) or "state" not in doc:
        raise RunDirError(f"checkpoint {js} is not a bsnet checkpoint (no state and meta)")
    if hashlib.sha256(data).hexdigest() != doc.get("sha256"):
        raise RunDirError(f"checkpoint {blob} is corrupted (checksum mismatch)")
    try:
        tensors = load(data)
    except Exception as e:  # a file that is not safetensors (a pickle, say) is refused, never executed
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunDirError(f"checkpoint {blob} is not a valid safetensors file: {why}") from None
    try:
        return _unflatten(doc["state"], tensors), doc.get("meta", {})
    except (ValueError, TypeError, RecursionError) as e:
        raise RunDirError(f"checkpoint {js} is damaged: {e}") from None


def save_epoch_checkpoint(directory: Path, epochs_done: int, state: dict[str, Any], meta: dict[str, Any],
                          keep: int = 2) -> None:
    """`epoch-NNNN`, then the oldest beyond `keep` removed: a damaged newest one still leaves a good one. The run's
    progress orders them: those of later epochs (damaged ones a restarted run went back from) are removed too."""
    save_checkpoint(directory, f"epoch-{epochs_done:04d}", state, {**meta, "format_version": CHECKPOINT_FORMAT})
    names = epoch_checkpoints(directory)
    done = [name for epoch, name in names if epoch <= epochs_done]
    for old in done[:-keep] + [name for epoch, name in names if epoch > epochs_done]:
        for suffix in (".json", ".safetensors", ".safetensors.tmp", ".json.tmp"):
            (directory / f"{old}{suffix}").unlink(missing_ok=True)


def epoch_checkpoints(directory: Path) -> list[tuple[int, str]]:
    """(epochs done, name) of the epoch checkpoints in `directory`, oldest first."""
    found = {(int(p.name[6:].split(".")[0]), p.name.split(".")[0]) for p in directory.glob("epoch-*.*")
             if p.name[6:].split(".")[0].isdigit()}
    return sorted(found)


def load_latest_checkpoint(directory: Path) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
    """The newest checkpoint that reads back intact: (state, meta, messages about the ones skipped)."""
    messages = []
    for _, name in reversed(epoch_checkpoints(directory)):
        try:
            state, meta = load_checkpoint(directory, name)
        except RunDirError as e:
            messages.append(f"{e}; falling back to the previous checkpoint")
            continue
        version = meta.get("format_version")
        if version != CHECKPOINT_FORMAT:
            raise RunDirError(f"checkpoint {directory / name} has format version {version}; this bsnet "
                              f"reads version {CHECKPOINT_FORMAT}")
        return state, meta, messages
    return None, {}, messages


def rng_state() -> dict[str, Any]:
    """The global RNG states of torch, numpy and Python, in a checkpointable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_py = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      gauss], "python": [version, list(internal), gauss_py]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_py = state["python"]
    random.setstate((version, tuple(internal), gauss_py))
