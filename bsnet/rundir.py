"""Whose files are in a run directory: the marker bsnet writes, the lock, and where a search may write.

A run directory is recognised by its marker, `.bsnet-run`, a JSON object bsnet writes before anything else:

    {"format_version": 1, "bsnet_version": "0.1.0", "written": ["checkpoints/", "config.yaml", ...]}

`written` lists, relative to the run, what bsnet created there: files, and folders (ending in "/") whose files of
bsnet's own names (checkpoints, `final/`'s three files) are bsnet's too. bsnet replaces or deletes only what it lists;
anything else in the folder is the user's and is left as it is. A run written before the marker is recognised by its
config.yaml together with an architecture.json or a checkpoint of a format version bsnet knows; its known outputs
count as bsnet's.

Every command that writes into a run holds its lock, an OS lock on `.bsnet-lock` that holds the holder's pid; the
OS releases it when the process ends, even by kill -9, so a killed run resumes at once.
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from bsnet.runs import CHECKPOINT_FORMAT, RunDirError

try:
    import fcntl
except ImportError:  # Windows: no OS file lock here, runs are not locked
    fcntl = None  # type: ignore[assignment]

MARKER, LOCK, STAGING = ".bsnet-run", ".bsnet-lock", ".bsnet-new"
RUN_FORMAT = 1
SEARCH_OUTPUTS = ("weights.safetensors", "search.png", "architecture.png", "architecture.json")
FINAL_FILES = ("model.safetensors", "metrics.jsonl", "result.json")  # result.json last: its presence marks a training
# Inside a folder bsnet created, the files of these names are bsnet's (a `.tmp` is an atomic write cut short).
_OWN_FILES = {"checkpoints": re.compile(r"(epoch-\d+|best)\.(json|safetensors)(\.tmp)?"),
              **{d: re.compile(r"(model\.safetensors|metrics\.jsonl|result\.json)(\.tmp)?")
                 for d in ("final", "final.partial", "final.replaced")}}
# What a run written before the marker holds of bsnet's: its known outputs, by name.
_LEGACY = ("config.yaml", "metrics.jsonl", *SEARCH_OUTPUTS, "eval.json", "checkpoints/", "final/", "final.partial/",
           "final.replaced/", "export/", *(f"export/{f}" for f in (
               "model.safetensors", "model.architecture.json", "model.onnx", "found_network.py",
               "found_network.safetensors")))
# The run's own files: no other command's output may land on one of them.
RUN_OWN = {MARKER, LOCK, STAGING, "config.yaml", "metrics.jsonl", *SEARCH_OUTPUTS, "checkpoints", "final",
           "final.partial", "final.replaced"}


# ---- the marker -------------------------------------------------------------------------------------------
def _check_name(name: Any, where: Path) -> str:
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    if not parts or name.startswith("/") or "\\" in name or any(p in (".", "..") for p in parts) or "//" in name:
        raise RunDirError(f"{where / MARKER} is damaged: {name!r} is not a path inside the run")
    return name


def read_marker(run_dir: Path) -> dict[str, Any] | None:
    """The marker's content, checked; None when the folder has none."""
    path = run_dir / MARKER
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is damaged: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("written"), list):
        raise RunDirError(f"{path} is damaged: not a bsnet run marker")
    if doc.get("format_version") != RUN_FORMAT:
        raise RunDirError(f"{run_dir} has run format version {doc.get('format_version')!r}; this bsnet reads version "
                          f"{RUN_FORMAT}")
    doc["written"] = [_check_name(n, run_dir) for n in doc["written"]]
    return doc


def write_marker(run_dir: Path, written: set[str] | list[str]) -> None:
    from bsnet import __version__
    from bsnet.runs import atomic_write_text
    doc = {"format_version": RUN_FORMAT, "bsnet_version": __version__, "written": sorted(set(written))}
    atomic_write_text(run_dir / MARKER, json.dumps(doc, indent=1) + "\n")


def _version(path: Path, *keys: str) -> Any:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for k in keys:
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def _legacy_run(path: Path) -> bool:
    from bsnet.architecture import READABLE_VERSIONS
    if not (path / "config.yaml").is_file():
        return False
    return _version(path / "architecture.json", "format_version") in READABLE_VERSIONS or any(
        _version(p, "meta", "format_version") == CHECKPOINT_FORMAT for p in (path / "checkpoints").glob("epoch-*.json"))


def is_run(path: Path) -> bool:
    """Whether `path` is a run bsnet wrote: its marker, or a run written before the marker (RunDirError when the
    marker is damaged or of another version)."""
    if not path.is_dir():
        return False
    return read_marker(path) is not None or _legacy_run(path)


def written(run_dir: Path) -> set[str]:
    """What bsnet wrote in the run: the marker's list, or a run's known outputs written before the marker."""
    marker = read_marker(run_dir)
    if marker is not None:
        return set(marker["written"])
    return {n for n in _LEGACY if (run_dir / n).exists()}


def _wrote(names: set[str], name: str) -> bool:
    parent, _, base = name.rpartition("/")
    own = _OWN_FILES.get(parent)
    return name in names or (f"{parent}/" in names and own is not None and own.fullmatch(base) is not None)


def claim(run_dir: Path, *names: str) -> None:
    """Record `names` (relative to the run, "name/" for a folder) as bsnet's, before bsnet writes them. RunDirError
    when one is there already and bsnet did not write it: bsnet never replaces what it did not write."""
    before = written(run_dir)
    for name in names:
        _check_name(name, run_dir)
        path = run_dir / name
        if name.endswith("/") and path.exists() and not path.is_dir():
            raise RunDirError(f"{path} is a file bsnet did not write, where bsnet writes a folder: it is left as it is")
        if not name.endswith("/") and (path.exists() or path.is_symlink()) and not _wrote(before, name):
            raise RunDirError(f"{path} was not written by bsnet: it is left as it is; move it, or write elsewhere")
    # a folder that is there already stays the user's: bsnet records the files it writes into it one by one
    new = {n for n in names if not _wrote(before, n) and not (n.endswith("/") and (run_dir / n).exists())}
    for n in list(new):  # the folders a file's write will create are bsnet's too
        parent = PurePosixPath(n.rstrip("/")).parent
        while str(parent) != "." and not (run_dir / parent).exists():
            new.add(f"{parent}/")
            parent = parent.parent
    if new or read_marker(run_dir) is None:
        write_marker(run_dir, before | new)


def _inside(run_dir: Path, name: str) -> Path | None:
    """`run_dir / name` when it lies inside the run with no link on the way out of it (nothing outside is touched)."""
    path = run_dir / name.rstrip("/")
    try:
        return path if path.parent.resolve() == (run_dir.resolve() / name.rstrip("/")).parent else None
    except OSError:
        return None


def remove_written(run_dir: Path, *only: str) -> None:
    """Delete what bsnet wrote in the run (or in the folders `only`, "name/"): its files, and its folders once they
    are empty. Anything else, in the run or in those folders, is left as it is."""
    names = {n for n in written(run_dir) if not only or any(n.startswith(o) for o in only)}
    for name in sorted((n for n in names if not n.endswith("/")), key=len, reverse=True):
        path = _inside(run_dir, name)
        for p in (path, path and path.with_name(path.name + ".tmp")):
            if p is not None and (p.is_file() or p.is_symlink()):
                p.unlink()
    for name in sorted((n for n in names if n.endswith("/")), key=lambda n: n.count("/"), reverse=True):
        folder, own = _inside(run_dir, name), _OWN_FILES.get(name.rstrip("/"))
        if folder is None or folder.is_symlink() or not folder.is_dir():
            continue
        for p in folder.iterdir():
            if own is not None and own.fullmatch(p.name) and (p.is_file() or p.is_symlink()):
                p.unlink()
        try:
            folder.rmdir()
        except OSError:  # the user's files are in it
            pass


# ---- the lock -----------------------------------------------------------------------------------------------
_held: dict[Path, list[int]] = {}  # run -> [file descriptor, depth]: one process takes its own lock again freely


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock while writing to it; RunDirError naming the holder's pid when another process holds it."""
    key = run_dir.resolve()
    if key in _held or fcntl is None:
        _held.setdefault(key, [-1, 0])[1] += 1
        try:
            yield
        finally:
            _release(key)
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirError(f"{run_dir} is in use by another bsnet process (pid {holder}): wait until it has finished, "
                          "or stop it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        _release(key)


def _release(key: Path) -> None:
    _held[key][1] -= 1
    if _held[key][1] == 0:
        fd = _held.pop(key)[0]
        if fd >= 0:
            os.close(fd)  # releases the OS lock


def _relative(run_dir: Path, path: Path) -> str | None:
    """`path` relative to the run when it lies inside it, through links or by its name (a link out of the run is
    still the run's name for it: what it points to is claimed like the run's own)."""
    for p, root in ((Path(path).resolve(), run_dir.resolve()), (Path(os.path.abspath(path)),
                                                                 Path(os.path.abspath(run_dir)))):
        try:
            return p.relative_to(root).as_posix()
        except ValueError:
            pass
    return None


@contextmanager
def writing(run_dir: Path, *paths: Path) -> Iterator[None]:
    """For a command that reads the run and writes `paths`: those inside the run are claimed (never one of the
    run's own files, never a file bsnet did not write), under the run's lock; those outside must not exist yet.
    None inside: no lock."""
    resolved = [Path(p).resolve() for p in paths]
    for i, p in enumerate(resolved):
        if p in resolved[:i]:
            raise RunDirError(f"two of the files to write are the same file, {paths[i]}: choose another --out")
    inside = [(n, p) for n, p in ((_relative(run_dir, p), p) for p in paths) if n is not None]
    for name, path in inside:
        if name == "." or name.split("/")[0] in RUN_OWN:
            raise RunDirError(f"{path} is part of the run {run_dir} ({name}): write it elsewhere")
    for p in paths:  # outside the run nothing records what bsnet wrote, so nothing there is replaced
        if _relative(run_dir, p) is None and (Path(p).exists() or Path(p).is_symlink()):
            raise RunDirError(f"{p} exists: bsnet does not replace a file outside its run directories; remove it, "
                              "or choose another --out")
    names = [n for n, _ in inside]
    if not names:
        yield
        return
    with locked(run_dir):
        claim(run_dir, *names)
        yield


# ---- where a search writes ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunPlace:
    """Where a search writes: its run directory `path`; with --overwrite, first `staging` (`path/.bsnet-new/`),
    until the new run has its first checkpoint (`commit_overwrite`): the old run is kept through any failure before."""

    path: Path
    staging: Path | None = None


def _new_numbered(root: Path, prefix: str = "search") -> Path:
    """`runs/search-001`, `-002`, ...: the first free name, taken at once so that two runs never share one."""
    root.mkdir(parents=True, exist_ok=True)
    i = 1
    while True:
        try:
            (root / f"{prefix}-{i:03d}").mkdir()
            return root / f"{prefix}-{i:03d}"
        except FileExistsError:
            i += 1


def _mode(path: Path, resume: bool, overwrite: bool) -> str:
    """`new`, `resume` or `overwrite`; RunDirError for a folder a search may not write to."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is a file, not a directory")
    run = is_run(path)
    if resume:
        if not run:
            raise RunDirError(f"nothing to resume in {path}: it holds no bsnet run")
        return "resume"
    if run:
        if not overwrite:
            raise RunDirError(f"{path} already holds a run: pass --resume to continue it or --overwrite to replace it")
        return "overwrite"
    found = sorted(p.name for p in path.iterdir() if p.name not in (LOCK, MARKER + ".tmp")) if path.is_dir() else []
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise RunDirError(f"{path} is not a bsnet run and is not empty ({shown}): a search writes only into a new or "
                          "empty folder, or a run bsnet wrote; choose another --out")
    return "new"


@contextmanager
def open_run(out: str | Path | None, *, resume: bool, overwrite: bool,
             root: str | Path = "runs") -> Iterator[RunPlace]:
    """The run directory a search writes to (default: the next `root/search-NNN`), locked while the search runs.
    Refuses to mix two runs in one folder and to write into a folder bsnet did not write."""
    if out is None:
        if resume:
            raise RunDirError("--resume needs --out DIR naming the run to continue")
        path = _new_numbered(Path(root))
    else:
        path = Path(out)
        _mode(path, resume, overwrite)  # before anything is written there
        path.mkdir(parents=True, exist_ok=True)
    with locked(path):
        mode = _mode(path, resume, overwrite)  # again, now that no other bsnet process can change it
        if mode != "new" and (path / STAGING).exists():
            discard_staging(path / STAGING)  # an --overwrite stopped before its first checkpoint
        if mode == "new" or read_marker(path) is None:  # a run written before the marker gets one
            write_marker(path, written(path) if mode != "new" else [])
        place = RunPlace(path)
        if mode == "overwrite":
            (path / STAGING).mkdir()
            write_marker(path / STAGING, [])
            place = RunPlace(path, path / STAGING)
        try:
            yield place
        except BaseException:
            if place.staging is not None and place.staging.exists():
                try:
                    discard_staging(place.staging)
                except (RunDirError, OSError):
                    pass  # the error being raised says more; the next --overwrite removes it
            raise


def discard_staging(staging: Path) -> None:
    """Delete a new run's staging folder: bsnet's files in it, then the folder once empty."""
    if staging.is_symlink() or read_marker(staging) is None:
        raise RunDirError(f"{staging} was not written by bsnet: move it, then rerun")
    remove_written(staging)
    (staging / MARKER).unlink()
    try:
        staging.rmdir()
    except OSError:
        raise RunDirError(f"{staging} holds files bsnet did not write: move them, then rerun") from None


def commit_overwrite(place: RunPlace) -> None:
    """The new run (in `place.staging`, its first checkpoint written) takes the old run's place: the old run's
    files are deleted and the new run's moved in; files bsnet did not write stay where they are."""
    path, staging = place.path, place.staging
    assert staging is not None
    old, new = written(path), written(staging)
    moves = [(p, path / p.relative_to(staging)) for p in sorted(staging.rglob("*"))
             if p.is_file() and p != staging / MARKER]
    for _, dst in moves:
        if (dst.exists() or dst.is_symlink()) and not _wrote(old, dst.relative_to(path).as_posix()):
            raise RunDirError(f"{dst} was not written by bsnet: it is left as it is, and so is the old run; move it")
    write_marker(path, old | new)  # from here on, every file of either run is recorded as bsnet's
    remove_written(path)
    for src, dst in moves:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    kept = {n for n in old if (path / n).is_dir()}  # the old run's folders that hold the user's files
    write_marker(path, new | kept)
    for d in sorted((p for p in staging.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        d.rmdir()
    (staging / MARKER).unlink()
    staging.rmdir()
