"""The README's Python examples run as written (the first with fewer epochs and a smaller fabric, to stay fast)."""
import re
from pathlib import Path

import torch

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_api_example_runs(capsys):
    code = BLOCKS[0].replace("epochs=12)", "epochs=1, supernet_config={'layers': 3, 'channels': 8})")
    code = code.replace("finetune_epochs=4", "finetune_epochs=1")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    run, outcome, model = namespace["run"], namespace["outcome"], namespace["model"]
    assert run.search.within_budget(outcome.mask) and bool(run.net.graph.connected(outcome.mask))
    flops, projected, acc = capsys.readouterr().out.split()  # what the example prints
    assert float(flops) == float(namespace["bsnet"].FlopsCost()(run.net, outcome.mask)) and 0.1 < float(acc) <= 1.0
    x = torch.randn(4, *run.net.input_shape)
    outcome.network.eval(), model.eval()
    assert torch.allclose(model(x), outcome.network(x, outcome.mask), atol=1e-5)


def test_custom_supernetwork_example_runs():
    namespace: dict = {}
    exec(compile(BLOCKS[1], "README.md", "exec"), namespace)  # as written: its own imports
    search = namespace["search"]
    assert search.net.gate_names == ["wide", "narrow"]
    search.step(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert search.within_budget(search.found().mask)


def test_width_split_example_runs():
    namespace: dict = {}
    exec(compile(BLOCKS[2], "README.md", "exec"), namespace)  # as written: its own imports
    net, pair = namespace["net"], namespace["pair"]
    assert net.gate_names == ["W-0", "W-1", "W-2", "W-3"] and namespace["half"].shape == (2, 10)
    x = torch.randn(2, 3, 32, 32)
    stem, block, head = (net.blocks[n].eval() for n in ("stem", "block", "head"))
    with torch.no_grad():  # every group kept: the unsplit pair
        unsplit = head(block[1:](torch.nn.Sequential(*pair).eval()(stem(x))))
        assert torch.allclose(net.eval()(x, net.full_mask()), unsplit, atol=1e-5)
