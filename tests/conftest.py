import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bsnet import SuperNetwork, create_supernet, list_supernets
from bsnet.graph import Graph
from torch import nn

# Small settings for every registered super network, for fast tests (id -> name, settings): a fabric registered
# without one fails the tests that use `small_net` instead of being left untested. The width fabric is a variant.
SMALL = {
    "cnf": ("cnf", dict(layers=3, channels=4, image_size=8)),
    "resnet_fabric": ("resnet_fabric", dict(blocks=2, channels=[4, 8, 8], image_size=8, shift="slr")),
    "resnet_fabric-width": ("resnet_fabric", dict(blocks=2, channels=[4, 8, 8], image_size=8, shift="slr",
                                                  width_groups=4, width_multiplier=2.0)),
}


def create_small(name: str) -> SuperNetwork:
    if name not in SMALL:
        pytest.fail(f"super network {name!r} has no small test settings: add them to SMALL in tests/conftest.py")
    registered, settings = SMALL[name]
    return create_supernet(registered, **settings)


@pytest.fixture(params=sorted({*list_supernets(), *SMALL}))
def small_net(request) -> SuperNetwork:
    torch.manual_seed(0)
    return create_small(request.param)


class Lin(nn.Linear):
    """A linear node (FLOPs 2·in·out per example)."""


def diamond() -> SuperNetwork:
    """in -> a -> out and in -> b -> out, gates on the edges into `out`, plus a fixed branch c."""
    g = Graph(input="in", output="out")
    for n in ("in", "a", "b", "sum", "out"):
        g.add_node(n)
    g.add_edge("in", "a")
    g.add_edge("in", "b")
    g.add_edge("a", "sum", gate="a")
    g.add_edge("b", "sum", gate="b")
    g.add_edge("sum", "out")
    mods = {"in": nn.Identity(), "a": nn.Linear(4, 4), "b": nn.Linear(4, 4, bias=False), "sum": nn.Identity(),
            "out": nn.Linear(4, 2)}
    return SuperNetwork(g, mods, (4,))


ROOT = Path(__file__).resolve().parent.parent


def _check_generated_file(path: Path, x: torch.Tensor, want: torch.Tensor, tol: float = 1e-5) -> None:
    """Run a generated python export in a fresh interpreter where bsnet cannot be imported (the repository root is
    on the path only for the tests' own layers) and compare its outputs with `want`."""
    torch.save(x, path.parent / "x.pt")
    torch.save(want, path.parent / "want.pt")
    # `sys.modules["bsnet"] = None` makes any import of bsnet fail: the file must not need it.
    script = (f"import sys, torch\nsys.path.append({str(ROOT)!r})\nsys.modules['bsnet'] = None\n"
              f"from {path.stem} import FoundNetwork\n"
              f"m = FoundNetwork.from_safetensors({path.with_suffix('.safetensors').name!r})\n"
              "with torch.no_grad():\n"
              "    d = (m(torch.load('x.pt')) - torch.load('want.pt')).abs().max().item()\n"
              f"assert d <= {tol}, d\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=path.parent, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.fixture
def check_generated_file():
    return _check_generated_file


# ---- a finished run, for the tests that read, export or tamper with one ---------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A tiny finished search (tests/cli_options.TINY), once per test module: never change it, copy it (`run`)."""
    from bsnet.cli import main
    from tests.cli_options import TINY
    out = tmp_path_factory.mktemp("runs") / "r"
    assert main(["search", *TINY, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A fresh copy of `finished`, for one test to change."""
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy
