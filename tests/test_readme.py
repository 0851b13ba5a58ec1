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


def test_own_model_example_runs(capsys):
    """The one call, on a briefly trained CNN and on a tiny BERT (the README's checkpoint cannot be downloaded)."""
    from transformers import BertConfig

    from tests.test_real_models import ResNet50
    torch.manual_seed(0)
    x = torch.randn(96, 3, 32, 32)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()  # 4 classes a CNN can learn
    cnn = ResNet50()
    opt = torch.optim.SGD(cnn.parameters(), lr=0.05, momentum=0.9)
    for i in range(30):
        b = slice(16 * (i % 4), 16 * (i % 4) + 16)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(cnn(x[b]), y[b]).backward()
        opt.step()
    ids = torch.randint(1, 100, (8, 16))
    namespace = {"my_cnn": cnn.eval(), "train_loader": [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)],
                 "val_loader": [(x[64:], y[64:])], "input_ids": ids, "attention_mask": torch.ones_like(ids),
                 "text_batches": [({"input_ids": torch.randint(1, 100, (8, 16)),
                                    "attention_mask": torch.ones(8, 16, dtype=torch.long)}, torch.randint(0, 2, (8,)))
                                  for _ in range(3)],
                 "MY_CHECKPOINT": None}
    tiny = "BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, " \
           "num_attention_heads=4, intermediate_size=64, num_labels=2))"
    code = BLOCKS[3].replace("BertForSequenceClassification.from_pretrained(MY_CHECKPOINT, num_labels=2)", tiny)
    namespace["BertConfig"] = BertConfig
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    share, before, after = re.fullmatch(r"(\d+)% of the FLOPs, val accuracy (\S+) -> (\S+)", printed[0]).groups()
    assert int(share) <= 50 and 0.0 <= float(before) <= 1.0 and 0.0 <= float(after) <= 1.0  # the CNN's
    report, variant = namespace["report"], namespace["variant"]  # the BERT's
    assert report.cost["flops"] <= 0.5 * report.full_cost["flops"] * (1 + 1e-9) and report.architecture.kept
    assert variant(namespace["batch"]).shape == (8, 2) and printed[1] == str(report.architecture.kept)
