"""fit: the whole job on a user's own model in one call. The model becomes a super network (`from_model`), the search
learns which of its branches, widths and heads to keep under the budgets from the user's batches, and the found
variant, on the model's own weights (each split pair's channels of largest norm), is fine-tuned and returned as a
plain network with a report. These are the steps `bsnet search --model` takes
(`bsnet.pipeline.run_epochs`, `bsnet.outcome.finish`), on the user's batches instead of a data set. No files are
written: save the variant as you like (`bsnet.export`), or use `bsnet.run_search` for a run directory with
checkpoints, resume and the CLI's commands."""
from __future__ import annotations

import copy
import dataclasses
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from bsnet.architecture import Architecture
from bsnet.budgets import parse_budget
from bsnet.export.module import export_module
from bsnet.from_model import from_model
from bsnet.inputs import available_device
from bsnet.outcome import Progress, finish, found_architecture, no_progress
from bsnet.pipeline import SearchRun, UserBatches, run_epochs
from bsnet.search import BudgetedSearch, SearchConfig
from bsnet.train import accuracy

Batches = Iterable[tuple[Any, torch.Tensor]]  # (inputs: a tensor or a dict of tensors, targets), a DataLoader say


@dataclass
class FitReport:
    """What `fit` found and measured; costs per example, in each cost's units."""

    architecture: Architecture
    cost: dict[str, float]
    full_cost: dict[str, float]
    val_acc: float | None = None  # the fine-tuned variant's accuracy on `val`
    val_acc_model: float | None = None  # the model's own, before the search
    seconds: dict[str, float] = field(default_factory=dict)  # search, fine-tune
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per search epoch, as metrics.jsonl's

    def fraction(self, cost: str = "flops") -> float:
        """The variant's cost as a share of the model's."""
        return self.cost[cost] / self.full_cost[cost]


def _per_pass(train: Callable[..., Batches]) -> Callable[[int], Batches]:
    """`train` as `train(epoch)`: a function of no argument is called as it is."""
    try:
        params = inspect.signature(train).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume it takes the pass number
        return train
    takes = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)
    return train if takes else (lambda epoch: train())


def fit(model: nn.Module, example_args: Any, example_kwargs: Mapping[str, Any] | None = None, *,
        budgets: Sequence[str], train: Batches | Callable[..., Batches],
        val: Batches | Callable[[], Batches] | None = None, epochs: int = 3, finetune_epochs: int = 1,
        lr: float = 0.01, config: SearchConfig | None = None, device: torch.device | str = "cpu",
        gate: str | Sequence[str] = "residual", leaf_modules: Sequence = (), width_groups: int = 1,
        progress: Progress = no_progress) -> tuple[nn.Module, FitReport]:
    """A variant of `model` within `budgets`, fine-tuned, as a plain network (a `torch.fx.GraphModule`), and its
    report. The search chooses the architecture; the variant starts from `model`'s weights, not the search's: where
    a split pair keeps k channels they are its k of largest norm (`bsnet.width.keep_strongest`).

    Args:
        model: your (trained) model; it is left as it is (the search works on a copy).
        example_args, example_kwargs: one batch of inputs, as `from_model` takes them.
        budgets: `"50%"` (FLOPs), `"params=1.2M"`, `"latency=3ms"`... as on the command line.
        train: the training batches, (inputs, class targets) pairs, iterated once per pass; or a function returning
            them, `train()` or `train(epoch)` to shuffle each pass from its number (search epochs are 0 to `epochs` -
            1; the fine-tune's are 10,000 on; BatchNorm statistics are recomputed on pass 0, as they come: augmented
            if yours are).
        val: batches to score the model and the variant on (accuracy), if any.
        epochs: search epochs over `train`; finetune_epochs: epochs of the found variant alone afterwards.
        lr: the weights' learning rate in both phases (a tenth of a from-scratch rate: the weights are trained).
        config: other search settings (`lr` overrides its own).
        gate, leaf_modules, width_groups: as in `from_model` (`width_groups=4`: widths searched too;
            `gate="width"` with it: widths only, every residual branch kept).
        progress: `(label, total) -> advance(info)`, called for each epoch and the fine-tune (`bsnet.outcome.Progress`).

    Raises:
        ValueError: the model cannot be converted, a budget cannot be read, `train` holds no batches, or `device`
            is not on this machine.
        bsnet.search.BudgetError: no architecture meets every budget.
        bsnet.search.NonFiniteLossError: the loss diverged (lower `lr`).
    """
    if epochs < 1 or finetune_epochs < 0:
        raise ValueError("fit needs epochs >= 1 and finetune_epochs >= 0")
    for name, batches in (("train", train), ("val", val)):
        if batches is not None and not callable(batches) and iter(batches) is batches:
            raise ValueError(f"{name} is an iterator, used up after one pass: pass a list, a DataLoader, or a "
                             f"function returning the batches ({'train(epoch)' if name == 'train' else 'val()'})")
    device = available_device(device)
    each = _per_pass(train) if callable(train) else (lambda epoch: train)
    scored = val if callable(val) or val is None else (lambda: val)
    # The copy is captured on `device`: a captured program creates its own tensors (positions, masks) there.
    model = copy.deepcopy(model).to(device)
    def moved(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value
    example_args = tuple(map(moved, example_args)) if isinstance(example_args, (tuple, list)) else moved(example_args)
    example_kwargs = {k: moved(v) for k, v in (example_kwargs or {}).items()}
    net = from_model(model, example_args, example_kwargs, gate=gate, leaf_modules=leaf_modules,
                     width_groups=width_groups)
    val_model = None if scored is None else accuracy(net, scored(), device, mask=net.full_mask())
    first = each(0)  # a DataLoader (or a function returning one) knows its length: no pass needed to count
    steps = len(first) if hasattr(first, "__len__") else sum(1 for _ in first)
    if steps < 1:
        raise ValueError("train holds no batches")
    cfg = dataclasses.replace(config or SearchConfig(), lr=lr)
    search = BudgetedSearch(net, [parse_budget(b, device=str(device)) for b in budgets], cfg, steps_per_epoch=steps,
                            epochs=epochs, device=device)
    # The steps of `bsnet search`: its epoch loop and its ending (BatchNorm recalibrated, fine-tuned), on these batches.
    run = SearchRun(search, UserBatches(each, scored, steps), batch_size=0, seed=cfg.seed, device=device)
    trained = copy.deepcopy(net.state_dict())
    t0 = time.perf_counter()
    history = run_epochs(run, epochs, progress=progress)
    t1 = time.perf_counter()
    # The search chooses the architecture; the variant starts from the model's own weights, each split pair keeping
    # its channels of largest norm. On the trained ResNet-20 of BENCHMARKS.md: about half a point above the search's
    # weights where every branch is kept (gate="width"), a tie where branches are dropped.
    net.load_state_dict(trained)
    outcome = finish(run, finetune_epochs, lr=lr, progress=progress, strongest=True)
    arch = found_architecture(run, outcome, epochs=epochs)
    variant = export_module(outcome.network, outcome.mask).eval()
    report = FitReport(arch, arch.cost, arch.full_cost, outcome.metrics["val_acc_finetuned"]
                       if finetune_epochs else outcome.metrics["val_acc_search_weights"], val_model,
                       {"search": t1 - t0, "finetune": time.perf_counter() - t1}, history)
    return variant, report
