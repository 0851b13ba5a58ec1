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
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "architecture.json", "checkpoints")
# What bsnet writes in a run directory: search, `bsnet train` (final/), `bsnet export` (export/), `bsnet eval`.
RUN_OUTPUTS = RUN_MARKERS + ("weights.safetensors", "search.png", "architecture.png", "final", "final.partial",
                             "final.replaced", "export", "eval.json")
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


def run_markers(path: Path) -> list[str]:
    return [m for m in RUN_MARKERS if (path / m).exists()]


def is_run(path: Path) -> bool:
    return path.is_dir() and bool(run_markers(path))


def is_bsnet_run(path: Path) -> bool:
    """Whether `path` holds a search run bsnet wrote: its config.yaml has the keys bsnet writes."""
    try:
        cfg = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and {"supernet", "budget", "search_config"} <= cfg.keys()


def next_run_dir(root: Path, prefix: str = "search") -> Path:
    """`runs/search-001`, `-002`, ...: the first free name."""
    root.mkdir(parents=True, exist_ok=True)
    i = 1
    while (root / f"{prefix}-{i:03d}").exists():
        i += 1
    return root / f"{prefix}-{i:03d}"


def prepare_run_dir(out: str | None, *, resume: bool, overwrite: bool, root: str = "runs") -> Path:
    """The directory this run writes to; refuses to mix two runs in one directory."""
    if out is None:
        if resume:
            raise RunDirError("--resume needs --out DIR naming the run to continue")
        path = next_run_dir(Path(root))
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"--out {out} is a file, not a directory")
        if resume:
            if not is_run(path):
                raise RunDirError(f"nothing to resume in {out}: it holds no bsnet run")
        elif is_run(path):
            if not overwrite:
                raise RunDirError(f"{out} already holds a run: pass --resume to continue it or --overwrite to "
                                  "replace it")
            if not is_bsnet_run(path):
                raise RunDirError(f"{out} holds files that are not a bsnet run ({', '.join(run_markers(path))}): "
                                  "--overwrite replaces only runs bsnet wrote; choose another --out")
            for m in RUN_OUTPUTS:  # everything bsnet writes there, so that nothing of the old run is read back
                p = path / m
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__list__" in obj:
            return [_unflatten(v, tensors) for v in obj["__list__"]]
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
    except (OSError, json.JSONDecodeError) as e:
        raise RunDirError(f"checkpoint {js.with_suffix('')} cannot be read: {e}") from None
    if hashlib.sha256(data).hexdigest() != doc.get("sha256"):
        raise RunDirError(f"checkpoint {blob} is corrupted (checksum mismatch)")
    try:
        tensors = load_file(str(blob))
        return _unflatten(doc["state"], tensors), doc.get("meta", {})
    except Exception as e:  # a file that is not safetensors (a pickle, say) is refused, never executed
        raise RunDirError(f"checkpoint {blob} is not a valid safetensors file: {e}") from None


def save_epoch_checkpoint(directory: Path, epochs_done: int, state: dict[str, Any], meta: dict[str, Any],
                          keep: int = 2) -> None:
    """`epoch-NNNN`, then the oldest beyond `keep` removed: a damaged newest one still leaves a good one."""
    save_checkpoint(directory, f"epoch-{epochs_done:04d}", state, {**meta, "format_version": CHECKPOINT_FORMAT})
    names = sorted({p.name.split(".")[0] for p in directory.glob("epoch-*.*")})
    for old in names[:-keep]:
        for suffix in (".json", ".safetensors", ".safetensors.tmp", ".json.tmp"):
            (directory / f"{old}{suffix}").unlink(missing_ok=True)


def load_latest_checkpoint(directory: Path) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
    """The newest checkpoint that reads back intact: (state, meta, messages about the ones skipped)."""
    messages = []
    names = sorted({p.name.split(".")[0] for p in directory.glob("epoch-*.*")}, reverse=True)
    for name in names:
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
