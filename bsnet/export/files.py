"""Writing a loaded found network to a file in one of the export formats, never over a file of the run it reads."""
from __future__ import annotations

from pathlib import Path

import torch

from bsnet.architecture import Architecture
from bsnet.export.onnx import export_onnx
from bsnet.export.pt import save_weights
from bsnet.export.python_source import export_python
from bsnet.inputs import check_spec

FORMATS = {"pt": ".safetensors", "onnx": ".onnx", "python": ".py"}
EXPORT_DIR = "export"  # the one place in a run directory where exports are written


def written_files(fmt: str, out: Path) -> list[Path]:
    """Every file exporting to `out` as `fmt` writes: the file, and its architecture (`pt`) or weights (`python`)."""
    if fmt == "pt":
        return [out, out.with_name(out.stem + ".architecture.json")]
    if fmt == "python":
        return [out, out.with_suffix(".safetensors")]
    return [out]


def check_outside_run(paths: list[Path], run: Path) -> None:
    """Refuse any path that resolves (symbolic links followed) to a file of the run directory `run`: what the search,
    `bsnet train` and `bsnet eval` wrote there, the run's hidden files, and the run directory itself. Its `export/`
    folder is where exports go.

    Raises:
        ValueError: naming the path and the run file it would replace.
    """
    from bsnet.rundir import RUN_OWN
    run = run.resolve()
    owned = RUN_OWN | {"eval.json"}
    for p in paths:
        target = p.resolve()
        top = target.relative_to(run).parts[0] if target.is_relative_to(run) and target != run else None
        if target == run or top is not None and (top.removesuffix(".tmp") in owned or top.startswith(".")):
            raise ValueError(f"{p} would replace {target}, a file of the run {run} this export reads: write the "
                             f"export elsewhere (default: {run / EXPORT_DIR})")


def export_paths(fmt: str, out: Path, *, protect: Path | None = None) -> list[Path]:
    """The files exporting to `out` as `fmt` writes (`written_files`), checked before anything is written: a known
    format, a file (not a folder), two distinct files, none of them a file of the run `protect`.

    Raises:
        ValueError: one line saying which.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    if out.is_dir():
        raise ValueError(f"{out} is a directory: name the file to write")
    files = written_files(fmt, out)
    if len({f.resolve() for f in files}) != len(files):
        raise ValueError(f"{out} would be both the python source and its weights: name a {FORMATS[fmt]} file")
    if protect is not None:
        check_outside_run(files, protect)
    return files


def export_file(module: torch.fx.GraphModule, arch: Architecture, fmt: str, out: Path,
                input_shape: tuple[int, ...] | None = None, *, protect: Path | None = None) -> Path:
    """Write `module` (a loaded found network) as `fmt` to the file `out`: `pt` (safetensors, with the
    architecture beside it), `onnx` (for inputs of `input_shape`, checked once with ONNX Runtime) or `python`
    (source and its weights). `protect`: the run directory the network was read from, none of whose files may be
    written (`export_paths`)."""
    files = export_paths(fmt, out, protect=protect)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pt":
        save_weights(module, arch, out)
        arch.to_json(files[1])
    elif fmt == "onnx":
        if input_shape is None:
            raise ValueError("the onnx format needs the network's input shape")
        spec = arch.supernet_config.get("inputs")  # a model of several named inputs
        export_onnx(module, input_shape, out, input_spec=None if spec is None else check_spec(spec))
    else:
        export_python(module, arch, out)
    return out
