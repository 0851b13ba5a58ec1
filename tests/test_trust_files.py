"""Files are data: a weights file, an architecture.json, a latency table, a checkpoint or a config never makes bsnet
run code; a damaged or hand-edited one is one line on stderr and exit code 2; no export lands on a file of its run."""
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import bsnet
from bsnet.cli import main
from bsnet.costs.latency import LatencyCost, check_table
from bsnet.export.files import check_outside_run, export_file
from bsnet.export.load import UncheckedWeightsWarning
from bsnet.export.pt import read_checked, read_weights
from bsnet.export.python_source import check_source, python_source
from bsnet.runs import RunDirError, load_checkpoint, save_checkpoint
from tests.cli_options import TINY

ROOT = Path(__file__).resolve().parent.parent
IN_RUN = r"file of the run|part of the run"  # export's own check, or the run directory's


# ---- helpers ---------------------------------------------------------------------------------------------------
@pytest.fixture
def marker(tmp_path):
    """The file every payload tries to create: it must never exist."""
    return tmp_path / "pwned"


def payloads(marker: Path) -> list[str]:
    """Texts that become code if pasted into generated source or a docstring unescaped."""
    m = str(marker)
    return [f'x"); open({m!r}, "w")#', f"x'); open({m!r}, 'w')#", f'""";open({m!r},"w");"""',
            f"''';open({m!r},'w');'''", f"{{open({m!r}, 'w')}}"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` but bsnet's own bookkeeping (the run's marker and lock), byte for byte."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (".bsnet-run", ".bsnet-lock")}


def refused(argv: list[str], capsys, *patterns: str) -> str:
    """Run the command in-process: exit code 2, exactly one line on stderr, an error, no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("bsnet: error:"), err
    assert "Traceback" not in err
    for p in patterns:
        assert re.search(p, lines[0]), lines[0]
    return lines[0]


def succeeds(argv: list[str], capsys) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    return captured.out


def cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bsnet", *argv], cwd=cwd, capture_output=True, text=True, env=env)


def edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def header_of(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def rewrite_weights(path: Path, meta_change=None, data: bytes | None = None) -> None:
    """Rewrite a safetensors file's metadata (and tensor bytes), as a crafted file would: a valid safetensors file."""
    header, old = header_of(path)
    if meta_change:
        meta_change(header.setdefault("__metadata__", {}))
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + (old if data is None else data))


def set_stored_architecture(path: Path, change) -> None:
    def meta_change(meta):
        doc = json.loads(meta["architecture"])
        change(doc)
        meta["architecture"] = json.dumps(doc)
    rewrite_weights(path, meta_change)


def flip_byte(path: Path, from_end: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[-from_end] ^= 0x01
    path.write_bytes(bytes(raw))


def run_generated(path: Path) -> subprocess.CompletedProcess:
    """Import a generated python export and build its network in a fresh interpreter."""
    script = f"import sys\nsys.path.insert(0, {str(path.parent)!r})\nimport {path.stem} as m\nm.FoundNetwork()\n"
    return subprocess.run([sys.executable, "-c", script], cwd=path.parent, capture_output=True, text=True)


# ---- defect 1: the python export writes only literals bsnet formats ---------------------------------------------
def test_payloads_in_the_weights_metadata_never_reach_the_python_export(run, marker, capsys, tmp_path):
    """The weights file's own copy of the architecture is checked but not used: architecture.json is."""
    def plant(doc):
        doc["cost"] = {p: 1.0 for p in payloads(marker)}
        doc["budget"] = {p: 2.0 for p in payloads(marker)}
    set_stored_architecture(run / "weights.safetensors", plant)
    out = tmp_path / "net.py"
    succeeds(["export", str(run), "--format", "python", "--out", str(out)], capsys)
    source = out.read_text()
    assert not any(p in source for p in payloads(marker)) and "COSTS = {'flops'" in source
    assert run_generated(out).returncode == 0
    assert not marker.exists()


def test_payloads_in_architecture_json_become_strings_in_the_python_export(run, marker, capsys, tmp_path):
    def plant(doc):
        doc["cost"] = {**doc["cost"], **{p: 1.0 for p in payloads(marker)}}
        doc["budget"] = {**doc["budget"], **{p: 2.0 for p in payloads(marker)}}
        doc["bsnet_version"] = payloads(marker)[0]
    for weights_too in (False, True):  # architecture.json alone, then the weights' copy made to agree with it
        edit_json(run / "architecture.json", plant)
        if weights_too:
            set_stored_architecture(run / "weights.safetensors", plant)
        out = tmp_path / f"net{int(weights_too)}.py"
        succeeds(["export", str(run), "--format", "python", "--out", str(out)], capsys)
        namespace: dict = {}
        exec(compile(out.read_text(), str(out), "exec"), namespace)  # the file's own text, run as a user would
        assert set(payloads(marker)) <= set(namespace["COSTS"]) and set(payloads(marker)) <= set(namespace["BUDGET"])
        assert run_generated(out).returncode == 0
    succeeds(["show", str(run)], capsys)
    assert not marker.exists()


@pytest.mark.parametrize("field", ["cost", "budget", "full_cost"])
def test_a_cost_name_with_a_line_break_is_refused(run, marker, capsys, tmp_path, field):
    edit_json(run / "architecture.json", lambda d: d[field].update({f'x"""\nopen({str(marker)!r}, "w")\n"""': 1.0}))
    before = snapshot(run)
    refused(["export", str(run), "--format", "python", "--out", str(tmp_path / "n.py")], capsys,
            "architecture.json", f"'{field}'", "not a one-line name")
    assert snapshot(run) == before and not marker.exists() and not (tmp_path / "n.py").exists()


def test_python_source_of_a_handmade_architecture_holds_its_names_as_literals(small_net, marker):
    """The Python API: an Architecture built by hand with payload names is written as repr() literals only."""
    net = small_net.eval()
    arch = bsnet.Architecture(payloads(marker)[2], {}, {}, [], cost={p: 1.0 for p in payloads(marker)},
                              budget={payloads(marker)[0]: 3.0})
    source, _ = python_source(bsnet.export_module(net, net.full_mask()).eval(), arch, payloads(marker)[3])
    namespace: dict = {}
    exec(compile(source, "found.py", "exec"), namespace)
    assert namespace["SUPERNET"] == payloads(marker)[2] and namespace["WEIGHTS"] == payloads(marker)[3]
    assert list(namespace["COSTS"]) == payloads(marker)
    assert not marker.exists()
    with pytest.raises(ValueError, match="finite numbers"):
        python_source(bsnet.export_module(net, net.full_mask()), bsnet.Architecture(None, {}, {}, [],
                                                                                     cost={"flops": math.inf}), "w")


def test_generated_source_with_a_statement_bsnet_did_not_write_is_refused(small_net, marker):
    net = small_net.eval()
    source, _ = python_source(bsnet.export_module(net, net.full_mask()).eval(), bsnet.Architecture(None, {}, {}, []),
                              "w.safetensors")
    check_source(source, {})
    for extra in (f"open({str(marker)!r}, 'w')", "import os", "from os import system", "X = open('f')",
                  "COSTS = {}"):
        injected = source.replace("\n\n\nclass FoundNetwork", f"\n{extra}\n\n\nclass FoundNetwork")
        with pytest.raises(ValueError, match="generated python file"):
            check_source(injected, {})
    with pytest.raises(ValueError, match="does not parse"):
        check_source(source + "\n)", {})
    assert not marker.exists()


class Branchy(nn.Module):
    """A layer of the user's own code that torch.fx cannot trace (kept whole, imported by the generated file)."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.n = n
        self.lin = nn.Linear(n, n)

    def forward(self, x):
        return self.lin(x) if x.sum() > 0 else x


def graph_module(layer: nn.Module) -> torch.fx.GraphModule:
    root = nn.Module()
    root.layer = layer
    graph = torch.fx.Graph()
    graph.output(graph.call_module("layer", (graph.placeholder("x"),)))
    return torch.fx.GraphModule(root, graph)


def test_layers_are_written_only_as_calls_with_literal_arguments(marker, tmp_path):
    lin = nn.Linear(3, 3)
    lin.extra_repr = lambda: f"in_features=3), open({str(marker)!r}, 'w'"  # a repr that would be code
    with pytest.raises(ValueError, match="no constructor call"):
        bsnet.export.export_python(graph_module(lin), bsnet.Architecture(None, {}, {}, []), tmp_path / "a.py")

    class Elsewhere(Branchy):
        pass
    Elsewhere.__module__, Elsewhere.__qualname__ = "nowhere.imported", "Elsewhere"  # a class of no imported module
    with pytest.raises(ValueError, match="cannot be imported from nowhere.imported"):
        bsnet.export.export_python(graph_module(Elsewhere()), bsnet.Architecture(None, {}, {}, []), tmp_path / "b.py")

    class Odd(Branchy):
        pass
    Odd.__module__, Odd.__qualname__ = __name__, f"Odd;open({str(marker)!r},'w')"
    with pytest.raises(ValueError, match="not a plain module path"):
        bsnet.export.export_python(graph_module(Odd()), bsnet.Architecture(None, {}, {}, []), tmp_path / "c.py")
    assert not marker.exists() and not list(tmp_path.glob("*.py")) and not list(tmp_path.glob("*.safetensors"))


def test_python_export_imports_a_leaf_layer_from_the_module_that_defined_it(tmp_path):
    path = bsnet.export.export_python(graph_module(Branchy()), bsnet.Architecture(None, {}, {}, []),
                                      tmp_path / "leaf.py")
    assert f"from {__name__} import Branchy" in path.read_text() and "Branchy(n=3)" in path.read_text()


# ---- defect 4: no export over a file of its run -----------------------------------------------------------------
@pytest.mark.parametrize("fmt, target", [
    ("python", "weights.py"), ("python", "final/x.py"), ("python", "checkpoints/x.py"),
    ("pt", "weights.safetensors"), ("pt", "architecture.json"), ("pt", "metrics.jsonl"), ("pt", "config.yaml"),
    ("pt", "checkpoints/epoch-0002.safetensors"), ("pt", "final/model.safetensors"), ("pt", ".bsnet-run"),
    ("onnx", "config.yaml"), ("onnx", "search.png"), ("pt", "weights.safetensors.tmp"), ("python", "weights")])
def test_an_export_never_lands_on_a_file_of_its_run(run, capsys, fmt, target):
    (run / "final").mkdir(exist_ok=True)
    shutil.copy(run / "weights.safetensors", run / "final" / "model.safetensors")
    before = snapshot(run)
    refused(["export", str(run), "--format", fmt, "--out", str(run / target)], capsys, IN_RUN)
    assert snapshot(run) == before


def test_the_python_source_and_its_weights_cannot_be_one_file(run, capsys, tmp_path):
    mine = tmp_path / "x.safetensors"
    mine.write_bytes(b"the user's file")
    refused(["export", str(run), "--format", "python", "--out", str(mine)], capsys, "both the python source")
    assert mine.read_bytes() == b"the user's file"


def test_a_symbolic_link_into_the_run_is_followed_and_refused(run, capsys, tmp_path):
    before = snapshot(run)
    link = tmp_path / "out.safetensors"
    link.symlink_to(run / "weights.safetensors")
    refused(["export", str(run), "--format", "pt", "--out", str(link)], capsys, IN_RUN)
    alias = tmp_path / "alias"
    alias.symlink_to(run, target_is_directory=True)
    refused(["export", str(run), "--format", "python", "--out", str(alias / "weights.py")], capsys, IN_RUN)
    refused(["export", str(alias), "--format", "pt", "--out", str(run / "architecture.json")], capsys)
    assert snapshot(run) == before and link.is_symlink()


def test_exports_into_the_runs_export_folder_and_beside_it_are_allowed(run, capsys):
    for fmt, out in (("pt", None), ("python", None), ("pt", run / "model.safetensors")):
        succeeds(["export", str(run), "--format", fmt, *(["--out", str(out)] if out else [])], capsys)
    succeeds(["export", str(run), "--format", "pt"], capsys)  # again: it replaces its own earlier export
    assert (run / "export" / "model.safetensors").exists() and (run / "model.architecture.json").exists()


def test_export_file_protects_the_run_it_reads(run, tmp_path):
    module = bsnet.load(run)
    arch = bsnet.Architecture.from_json(run)
    for fmt, out in (("pt", run / "weights.safetensors"), ("python", run / "weights.py"),
                     ("onnx", run / "checkpoints" / "m.onnx")):
        with pytest.raises(ValueError, match="a file of the run"):
            export_file(module, arch, fmt, out, (1, 8, 8), protect=run)
    with pytest.raises(ValueError, match="a file of the run"):
        check_outside_run([run], run)
    check_outside_run([tmp_path / "elsewhere.safetensors", run / "export" / "m.safetensors"], run)


# ---- defect 6: the weights' checksum, format version and architecture ---------------------------------------------
def test_a_flipped_byte_in_the_weights_is_refused_by_export_eval_and_load(run, capsys, tmp_path):
    flip_byte(run / "weights.safetensors")
    before = snapshot(run)
    refused(["export", str(run), "--format", "pt", "--out", str(tmp_path / "m.safetensors")], capsys,
            "weights.safetensors", "checksum")
    refused(["eval", str(run)], capsys, "checksum")
    refused(["train", str(run), "--epochs", "1"], capsys, "checksum")
    with pytest.raises(ValueError, match="checksum"):
        bsnet.load(run)
    assert snapshot(run) == before and not (tmp_path / "m.safetensors").exists()


def test_a_flipped_byte_in_final_and_in_a_pt_export_is_refused(run, capsys, tmp_path):
    succeeds(["export", str(run), "--format", "pt", "--out", str(tmp_path / "m.safetensors")], capsys)
    flip_byte(tmp_path / "m.safetensors", 10)
    with pytest.raises(ValueError, match="m.safetensors are corrupted"):
        bsnet.load(tmp_path / "m.safetensors")
    (run / "final").mkdir()
    shutil.copy(run / "weights.safetensors", run / "final" / "model.safetensors")
    assert isinstance(bsnet.load(run), torch.fx.GraphModule)
    flip_byte(run / "final" / "model.safetensors", 4)
    with pytest.raises(ValueError, match="final/model.safetensors are corrupted"):
        bsnet.load(run)


def test_weights_files_carry_the_sha256_of_their_tensor_bytes(run, tmp_path):
    header, data = header_of(run / "weights.safetensors")
    meta = header["__metadata__"]
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["format"] == "bsnet-plain" and meta["format_version"] == "1"
    assert read_checked(run / "weights.safetensors")[2]
    succeeds_path = bsnet.export.export_python(bsnet.load(run), bsnet.Architecture.from_json(run), tmp_path / "n.py")
    header, data = header_of(succeeds_path.with_suffix(".safetensors"))
    assert header["__metadata__"]["sha256"] == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="weights of a python export"):
        bsnet.load(succeeds_path.with_suffix(".safetensors"))


def test_weights_of_another_network_than_architecture_json_are_refused(run, capsys, tmp_path):
    set_stored_architecture(run / "weights.safetensors", lambda d: d["kept"].pop())
    before = snapshot(run)
    refused(["export", str(run), "--out", str(tmp_path / "m.safetensors")], capsys, "another network",
            "architecture.json")
    with pytest.raises(ValueError, match="another network"):
        bsnet.load(run)
    assert snapshot(run) == before


@pytest.mark.parametrize("version", ["2", "0", "1; import os", ""])
def test_weights_of_another_format_version_are_refused(run, capsys, tmp_path, version):
    rewrite_weights(run / "weights.safetensors", lambda m: m.update(format_version=version))
    refused(["export", str(run), "--out", str(tmp_path / "m.safetensors")], capsys, "format version", "version 1")


def test_weights_metadata_that_is_damaged_is_refused(run, capsys, tmp_path):
    rewrite_weights(run / "weights.safetensors", lambda m: m.update(architecture="{not json"))
    refused(["export", str(run), "--out", str(tmp_path / "m.safetensors")], capsys, "metadata", "not JSON")
    rewrite_weights(run / "weights.safetensors", lambda m: m.update(architecture=json.dumps({"format_version": 1})))
    refused(["export", str(run), "--out", str(tmp_path / "m.safetensors")], capsys, "metadata", "'gates'")


def test_weights_without_their_architecture_copy_use_architecture_json(run, capsys, tmp_path):
    rewrite_weights(run / "weights.safetensors", lambda m: m.pop("architecture"))
    succeeds(["export", str(run), "--out", str(tmp_path / "m.safetensors")], capsys)
    assert (tmp_path / "m.architecture.json").exists()


def test_weights_written_before_checksums_load_with_one_warning(run, tmp_path):
    from safetensors.torch import save_model
    module = bsnet.load(run)
    stored = json.loads(header_of(run / "weights.safetensors")[0]["__metadata__"]["architecture"])
    save_model(module, str(run / "weights.safetensors"), metadata={"format": "bsnet-plain",
                                                                 "architecture": json.dumps(stored)})
    with pytest.warns(UncheckedWeightsWarning, match="no checksum") as caught:
        old = bsnet.load(run)
    assert len(caught) == 1 and len(str(caught[0].message).splitlines()) == 1
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(old(x), module(x))
    said = []
    bsnet.export.load.load_with_info(run, warn=said.append)
    assert len(said) == 1 and "unchecked" in said[0]


def test_a_pickle_in_place_of_the_weights_is_never_unpickled(run, marker, capsys, tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    torch.save({"w": Payload()}, run / "weights.safetensors")
    refused(["export", str(run), "--out", str(tmp_path / "m.safetensors")], capsys, "weights")
    with pytest.raises(ValueError):
        bsnet.load(run)
    with pytest.raises(ValueError, match="not a safetensors"):
        read_weights(run / "weights.safetensors")
    assert not marker.exists()


def test_a_truncated_or_empty_weights_file_is_one_line(run, capsys, tmp_path):
    raw = (run / "weights.safetensors").read_bytes()
    for content in (raw[:len(raw) // 2], raw[:4], b"", b"\xff" * 64):
        (run / "weights.safetensors").write_bytes(content)
        refused(["export", str(run), "--out", str(tmp_path / "m.safetensors")], capsys, "weights")


def test_weights_that_do_not_fit_the_architecture_are_one_line(run, tmp_path):
    from safetensors.torch import load_file
    tensors = load_file(str(run / "weights.safetensors"))
    name = next(iter(tensors))
    tensors[name] = torch.zeros(1)
    tensors["extra.weight"] = torch.zeros(2)
    meta = header_of(run / "weights.safetensors")[0]["__metadata__"]
    from bsnet.export.pt import write_checked
    write_checked(run / "weights.safetensors", tensors, {k: v for k, v in meta.items() if k != "sha256"})
    with pytest.raises(ValueError, match=r"do not fit its architecture \(unexpected: extra.weight; other shapes"):
        bsnet.load(run)


# ---- the architecture.json schema --------------------------------------------------------------------------------
def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _first_gate(value):
    return lambda d: d["gates"].__setitem__(next(iter(d["gates"])), value)


ARCHITECTURE_EDITS = {
    "probability above 1": (_first_gate(1.5), "'gates'.*probability"),
    "negative probability": (_first_gate(-0.1), "'gates'"),
    "NaN probability": (_first_gate(math.nan), "'gates'"),
    "probability as text": (_first_gate("high"), "'gates'"),
    "boolean probability": (_first_gate(True), "'gates'"),
    "gates as a list": (lambda d: d.__setitem__("gates", list(d["gates"])), "'gates'"),
    "kept unknown gate": (lambda d: d["kept"].append("Z-9_9"), "'kept'.*Z-9_9"),
    "kept twice": (lambda d: d["kept"].append(d["kept"][0]), "'kept'.*twice"),
    "kept not a list": (_set("kept", "C-0_0-0_1"), "'kept'"),
    "dropped unknown gate": (_set("dropped", ["Z-1"]), "'dropped'"),
    "added unknown gate": (_set("added", ["Z-1"]), "'added'"),
    "added not a list": (_set("added", "Z-1"), "'added'"),
    "exchanged unknown gate": (_set("exchanged", ["Z-1"]), "'exchanged'"),
    "negative cost": (lambda d: d["cost"].update(flops=-1), "'cost'.*flops"),
    "infinite cost": (lambda d: d["cost"].update(flops=math.inf), "'cost'"),
    "cost as text": (lambda d: d["cost"].update(params="12k"), "'cost'"),
    "negative budget": (lambda d: d["budget"].update(flops=-5.0), "'budget'"),
    "NaN full cost": (lambda d: d["full_cost"].update(flops=math.nan), "'full_cost'"),
    "costs as a list": (_set("cost", [1, 2]), "'cost'"),
    "format version as text": (_set("format_version", "1"), "format version 1"),
    "format version true": (_set("format_version", True), "format version True"),
    "format version 3": (_set("format_version", 3), "format version 3"),
    "no format version": (lambda d: d.pop("format_version"), "format version None"),
    "projected as text": (_set("projected", "yes"), "'projected'"),
    "supernet a number": (_set("supernet", 5), "'supernet'"),
    "supernet with a line break": (_set("supernet", "cnf\nimport os"), "'supernet'"),
    "supernet_config a list": (_set("supernet_config", [1]), "'supernet_config'"),
    "test accuracy above 1": (lambda d: d["metrics"].update(test_acc=2.0), "'metrics'.*test_acc"),
    "test accuracy as text": (lambda d: d["metrics"].update(full_test_acc="x"), "'metrics'.*full_test_acc"),
    "epochs negative": (lambda d: d["metrics"].update(epochs=-1), "'metrics'.*epochs"),
    "selected out of range": (lambda d: d["metrics"].update(selected=3), "'metrics'.*selected"),
    "metrics a list": (_set("metrics", []), "'metrics'"),
    "selection without selected": (lambda d: d["metrics"].update(selection=[{"kept": [], "val_acc": 0.5}]),
                                   "'metrics'.*selected"),
    "selection of unknown gates": (lambda d: d["metrics"].update(selection=[{"kept": ["Z"], "val_acc": 0.5}],
                                                                  selected=0), "'metrics.selection.kept'"),
    "bsnet_version a number": (_set("bsnet_version", 5), "'bsnet_version'"),
}


@pytest.mark.parametrize("edit", list(ARCHITECTURE_EDITS))
def test_a_hand_edited_architecture_is_one_line_naming_the_file_and_the_field(run, capsys, edit):
    change, pattern = ARCHITECTURE_EDITS[edit]
    edit_json(run / "architecture.json", change)
    before = snapshot(run)
    refused(["show", str(run)], capsys, "architecture.json", pattern)
    refused(["eval", str(run)], capsys, "architecture.json", pattern)
    with pytest.raises(ValueError, match="architecture.json"):
        bsnet.Architecture.from_json(run)
    assert snapshot(run) == before


@pytest.mark.parametrize("content", [b"", b"[]", b"null", b'"text"', b"\xff\xfe\x00garbage", b"{" * 5,
                                     b"[" * 100_000 + b"]" * 100_000])
def test_a_damaged_architecture_file_is_one_line(run, capsys, content):
    (run / "architecture.json").write_bytes(content)
    refused(["show", str(run)], capsys, "architecture")
    refused(["export", str(run)], capsys, "architecture")
    assert not (run / "export").exists()


@pytest.mark.parametrize("change, pattern", [
    (lambda d: d["supernet_config"].update(channels=-1), "cannot build the super network cnf"),
    (lambda d: d["supernet_config"].update(kernel_size=-3), "cannot build the super network cnf"),
    (lambda d: d["supernet_config"].update(layers="3; import os"), "layers must be an integer"),
    (lambda d: d["supernet_config"].update({"__import__('os')": 1}), "unknown cnf setting"),
    (lambda d: d.update(supernet="os.system"), "unknown super network"),
    (lambda d: d["gates"].update({"Z-9_9": 0.5}), "gates its super network does not have"),
    (lambda d: d.update(supernet=None), "custom super network"),
])
def test_an_architecture_its_super_network_cannot_hold_is_one_line(run, capsys, tmp_path, change, pattern):
    edit_json(run / "architecture.json", change)
    set_stored_architecture(run / "weights.safetensors", change)  # the weights' copy agrees: the builder decides
    refused(["export", str(run), "--out", str(tmp_path / "m.safetensors")], capsys, pattern)
    assert not (tmp_path / "m.safetensors").exists()


def test_an_architecture_from_a_model_records_typed_settings(tmp_path):
    doc = {"format_version": 1, "supernet": None, "gates": {}, "kept": [],
           "supernet_config": {"from_model": "M", "input_shape": [3, -1], "gate": "residual"}}
    with pytest.raises(ValueError, match="input_shape must be a list of positive integers"):
        bsnet.Architecture.from_dict(doc, "a.json")
    doc["supernet_config"].update(input_shape=[3, 8], leaf_modules="os:system")
    with pytest.raises(ValueError, match="leaf_modules must be a list of names"):
        bsnet.Architecture.from_dict(doc, "a.json")
    doc["supernet_config"].update(leaf_modules=["pkg.Layer"])
    assert bsnet.Architecture.from_dict(doc, "a.json").supernet_config["input_shape"] == [3, 8]


def test_an_architecture_without_metrics_shows(run, capsys):
    """Metrics are optional (an architecture written by your own code may have none): show prints what there is."""
    edit_json(run / "architecture.json", lambda d: d.update(metrics={"epochs": 2}))
    assert "kept gates" in succeeds(["show", str(run)], capsys)


def test_a_written_architecture_reads_back_equal(run):
    arch = bsnet.Architecture.from_json(run)
    arch.added, arch.exchanged = arch.kept[:1], [g for g in arch.gates if g not in arch.kept][:1]
    assert arch.added and arch.exchanged
    arch.to_json(run / "again.json")
    assert bsnet.Architecture.from_json(run / "again.json") == arch


# ---- latency tables ----------------------------------------------------------------------------------------------
BAD_TABLES = {
    "negative latency": ({"nodes": {"a": -1e-3}}, "node 'a'.*-0.001"),
    "NaN latency": ({"nodes": {"a": math.nan}}, "node 'a'"),
    "infinite latency": ({"nodes": {"a": math.inf}}, "node 'a'"),
    "code as latency": ({"nodes": {"a": "__import__('os').system('x')"}}, "node 'a'"),
    "boolean latency": ({"nodes": {"a": True}}, "node 'a'"),
    "nodes a list": ({"nodes": [1e-3]}, "'nodes'"),
    "no nodes": ({"device": "cpu"}, "no 'nodes'"),
    "empty nodes": ({"nodes": {}}, "'nodes'"),
    "a list": ([1e-3], "no 'nodes'"),
    "format version 99": ({"format_version": 99, "nodes": {"a": 1e-3}}, "format version 99"),
    "fingerprint a number": ({"nodes": {"a": 1e-3}, "fingerprint": 5}, "fingerprint"),
}


@pytest.mark.parametrize("name", list(BAD_TABLES))
def test_a_bad_latency_table_is_one_line(tmp_path, name):
    table, pattern = BAD_TABLES[name]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    with pytest.raises(ValueError, match=pattern) as err:
        LatencyCost.from_table(path)
    assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1
    with pytest.raises(ValueError, match=pattern):
        LatencyCost(table)  # a table given in Python is checked the same way
    with pytest.raises(ValueError):
        check_table(table)


def test_a_bad_latency_table_on_the_command_line_is_one_line(tmp_path, capsys, marker):
    table = tmp_path / "t.json"
    table.write_text(json.dumps({"format_version": 1, "nodes": {"C-0_0": f"open({str(marker)!r}, 'w')"}}))
    before = table.read_bytes()
    refused(["search", *TINY, "--budget", "latency=1ms", "--latency-table", str(table), "--out", str(tmp_path / "r")],
            capsys, "latency table", "t.json")
    assert table.read_bytes() == before and not marker.exists()


def test_a_damaged_cached_latency_table_is_measured_again(tmp_path, monkeypatch):
    from tests.conftest import diamond
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    net = diamond()
    first = LatencyCost(min_run_time=0.001).node_costs(net)
    (cached,) = (tmp_path / "bsnet" / "latency").glob("*.json")
    edit_json(cached, lambda t: t["nodes"].update({n: -1.0 for n in t["nodes"]}))
    again = LatencyCost(min_run_time=0.001).node_costs(net)
    assert (again >= 0).all() and (first >= 0).all()
    assert all(v >= 0 for v in json.loads(cached.read_text())["nodes"].values())


def test_unreadable_latency_tables_are_one_line(tmp_path):
    for content in (b"\xff\xfe", b"{", b"[" * 100_000):
        (tmp_path / "t.json").write_bytes(content)
        with pytest.raises(ValueError, match="cannot read latency table"):
            LatencyCost.from_table(tmp_path / "t.json")
    with pytest.raises(ValueError, match="cannot read latency table"):
        LatencyCost.from_table(tmp_path / "missing.json")


# ---- checkpoints -------------------------------------------------------------------------------------------------
def _checkpoint(tmp_path: Path) -> Path:
    save_checkpoint(tmp_path, "c", {"w": torch.ones(2), "step": 3, "opt": {0: [torch.zeros(1), (1, 2)]}},
                    {"format_version": 1})
    return tmp_path


def _reseal(directory: Path, change) -> None:
    """Change a checkpoint's JSON and give it the right checksum: damage a checksum cannot catch."""
    js = directory / "c.json"
    doc = json.loads(js.read_text())
    change(doc)
    doc["sha256"] = hashlib.sha256((directory / "c.safetensors").read_bytes()).hexdigest()
    js.write_text(json.dumps(doc))


def test_a_checkpoint_reads_back(tmp_path):
    state, meta = load_checkpoint(_checkpoint(tmp_path), "c")
    assert torch.equal(state["w"], torch.ones(2)) and state["opt"][0][1] == (1, 2) and meta == {"format_version": 1}


@pytest.mark.parametrize("change, pattern", [
    (lambda d: d.update(state={"__tensor__": "s/missing"}), "damaged.*does not hold"),
    (lambda d: d.update(state={"__dict__": 5}), "damaged"),
    (lambda d: d.update(state={"__list__": "abc"}), "damaged"),
    (lambda d: d.update(state={"__dict__": [["k"]]}), "damaged"),
    (lambda d: d.update(meta=[1]), "not a bsnet checkpoint"),
    (lambda d: d.pop("state"), "not a bsnet checkpoint"),
])
def test_a_damaged_checkpoint_skeleton_is_one_line(tmp_path, change, pattern):
    directory = _checkpoint(tmp_path)
    _reseal(directory, change)
    with pytest.raises(RunDirError, match=pattern) as err:
        load_checkpoint(directory, "c")
    assert len(str(err.value).splitlines()) == 1


def test_a_pickled_checkpoint_with_a_matching_checksum_is_never_unpickled(tmp_path, marker):
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    directory = _checkpoint(tmp_path)
    torch.save({"w": Payload()}, directory / "c.safetensors")
    _reseal(directory, lambda d: None)
    with pytest.raises(RunDirError, match="not a valid safetensors file"):
        load_checkpoint(directory, "c")
    (directory / "c.json").write_text("[]")
    with pytest.raises(RunDirError, match="not a bsnet checkpoint"):
        load_checkpoint(directory, "c")
    (directory / "c.json").write_bytes(b"\xff")
    with pytest.raises(RunDirError, match="cannot be read"):
        load_checkpoint(directory, "c")
    assert not marker.exists()


# ---- no command runs code from a file ----------------------------------------------------------------------------
def _plant_everywhere(run: Path, marker: Path) -> None:
    """Payloads in every text field of architecture.json and of the weights' metadata that a command reads."""
    def plant(doc):
        doc["cost"] = {**doc["cost"], **{p: 1.0 for p in payloads(marker)}}
        doc["budget"] = {**doc["budget"], **{p: 1.0 for p in payloads(marker)}}
        doc["metrics"] = {**doc["metrics"], **{p: p for p in payloads(marker)}}
        doc["bsnet_version"] = payloads(marker)[1]
    edit_json(run / "architecture.json", plant)
    set_stored_architecture(run / "weights.safetensors", plant)
    rewrite_weights(run / "weights.safetensors", lambda m: m.update({p: p for p in payloads(marker)}))


@pytest.mark.parametrize("command", [["show"], ["show", "--draw", "{tmp}/a.png"], ["export", "--format", "pt"],
                                     ["export", "--format", "python"], ["export", "--format", "onnx"], ["eval"],
                                     ["train", "--epochs", "1"]])
def test_no_command_runs_code_from_a_crafted_run(run, marker, capsys, tmp_path, command):
    _plant_everywhere(run, marker)
    argv = [command[0], str(run), *(a.replace("{tmp}", str(tmp_path)) for a in command[1:])]
    if command[0] == "export" and command[-1] == "onnx":
        pytest.importorskip("onnxruntime")
    succeeds(argv, capsys)
    for py in run.rglob("*.py"):
        assert run_generated(py).returncode == 0
    assert not marker.exists()


def test_a_crafted_config_names_no_code_that_bsnet_imports(tmp_path, marker, capsys, monkeypatch):
    """A config file is data: `model:` or a `package.module:cost` budget it names is not imported unless the user
    names that code on the command line."""
    module = tmp_path / "pwnmod_trust.py"
    module.write_text(f"open({str(marker)!r}, 'w').close()\n\ndef make():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for text in ("model: pwnmod_trust:make\n", "budget: ['pwnmod_trust:make=1']\n",
                 f"model: !!python/object/apply:os.system ['touch {marker}']\n"):
        config = tmp_path / "config.yaml"
        config.write_text(text)
        refused(["search", "--config", str(config), "--out", str(tmp_path / "r")], capsys)
        assert config.read_text() == text and not marker.exists()
    assert "pwnmod_trust" not in sys.modules


# ---- the same, as the user runs it: a process of its own ------------------------------------------------------
def test_refusals_from_a_process_of_its_own_are_one_line(run, marker, tmp_path):
    flip_byte(run / "weights.safetensors")
    edit_json(run / "architecture.json", lambda d: d["cost"].update({payloads(marker)[0]: 1.0}))
    before = snapshot(run)
    for argv, pattern in ((["export", str(run), "--format", "python", "--out", str(tmp_path / "n.py")], "checksum"),
                          (["export", str(run), "--format", "python", "--out", str(run / "weights.py")], "run"),
                          (["show", str(tmp_path / "nowhere")], "not a finished")):
        r = cli(argv, tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("bsnet: error:"), r.stderr
        assert "Traceback" not in r.stderr and pattern in lines[0]
    assert snapshot(run) == before and not marker.exists()
