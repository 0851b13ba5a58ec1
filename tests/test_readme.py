"""The README's Python examples run as written (the first with fewer epochs, to stay fast)."""
import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_api_example_runs(capsys):
    code = BLOCKS[0].replace("range(12)", "range(1)").replace("epochs=12", "epochs=1")
    code = code.replace('create_supernet("cnf", ', 'create_supernet("cnf", layers=3, channels=8, ')
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    search, found = namespace["search"], namespace["found"]
    assert search.within_budget(found.mask) and bool(search.net.graph.connected(found.mask))
    flops, projected, acc = capsys.readouterr().out.split()  # what the example prints
    assert float(flops) == float(namespace["bsnet"].FlopsCost()(search.net, found.mask)) and 0.0 <= float(acc) <= 1.0


def test_custom_supernetwork_example_runs():
    namespace: dict = {}
    exec(compile("import torch, bsnet\nfrom bsnet.search import BudgetedSearch\nimport bsnet.budgets\n" + BLOCKS[1],
                 "README.md", "exec"), namespace)
    search = namespace["search"]
    assert search.net.gate_names == ["wide", "narrow"]
    x, y = torch_batch()
    search.step(x, y)
    assert search.within_budget(search.found().mask)


def torch_batch():
    import torch
    return torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
