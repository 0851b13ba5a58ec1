"""Building the super network: the traced program cut into node modules around its gated blocks; `from_model`, the
whole conversion; `as_supernet`, what every command does with the object a user's factory returns."""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Any, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn

from bsnet.from_model.blocks import Block, check_shapes, cuts, gate_names, gated_modules, is_tensor, name_branches, \
    residual_blocks
from bsnet.from_model.capture import Program, bind, export_program
from bsnet.from_model.nodes import context_module, node_name, segment
from bsnet.from_model.heads import Attention, HeadGroup, find_attention, head_groups
from bsnet.from_model.pairs import Pair, Source, find_pair
from bsnet.from_model.pairs import sources as layer_sources
from bsnet.from_model.trace import Leaf, capture, leaves_record, resolve_leaves
from bsnet.graph import Graph
from bsnet.inputs import Inputs, check_spec, spec_of, zeros
from bsnet.supernet import SuperNetwork
from bsnet.width import Bias, split_layer_pair


class Increment(nn.Module):
    """`module(x) - x`: what a gated module adds to its input, so that `x + Increment(module)(x) == module(x)`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) - x


def from_model(model: nn.Module, example_args: Any, example_kwargs: Mapping[str, Any] | None = None, *,
               gate: str | Sequence[str] = "residual", leaf_modules: Sequence[Leaf] = (),
               width_groups: int = 1) -> SuperNetwork:
    """A super network whose gates switch the residual branches (or the named modules) of `model`.

    The model is captured with symbolic torch.fx where it can be (modules stay modules: leaf modules, named gates and
    the python export need that), else with torch.export (bsnet.from_model.capture), which follows Hugging Face
    transformers and any Python that runs the same way on every batch. The super network takes one tensor, or for a
    model of several tensor arguments a dict of them by name, and predicts the model's output tensor, its `logits`
    or its first output.

    Its `config` records how to convert the model again: `from_model` (the class name), `input_shape` (`inputs`, each
    input's dtype and shape, for several), `gate`, `leaf_modules` (as `module.QualName` class names and submodule
    paths; nothing that needs an import).

    Args:
        model: the network, with its trained weights.
        example_args: one batch of inputs: a tensor, or a tuple of `forward`'s positional arguments.
        example_kwargs: `forward`'s keyword arguments (`input_ids=..., attention_mask=...`); tensors are inputs,
            anything else keeps its example value.
        gate: `"residual"` gates every residual branch; `"width"` (with `width_groups` > 1) gates only the width
            groups, every branch keeping its first group (depth kept, widths searched); a list of qualified module
            names gates those modules (each must return a tensor shaped like its input; dropping it makes it the
            identity).
        leaf_modules: modules traced as single operations by torch.fx: classes, instances, submodule paths
            (`"body.1"`) or class names (`"Flip"` or `"pkg.layers.Flip"`).
        width_groups: 1, no width gates; N > 1: in each residual branch, the first layer pair whose hidden
            channels only its second layer reads (conv-BN-act-conv, Linear-act-Linear) is split into N channel
            groups `<branch>.w<j>`, each gated, beside the branch's own gate (bsnet.from_model.pairs); an attention
            branch of a torch.export program gets one gate per head instead (bsnet.from_model.heads).

    Raises:
        ValueError: the model cannot be captured (the message names the submodule and the construct that failed), a
            leaf or a gated module is not in the model, a gated module changes its input's shape, or nothing can
            be gated.
    """
    if not isinstance(width_groups, int) or width_groups < 1:
        raise ValueError(f"width_groups must be an integer >= 1, got {width_groups!r}")
    if width_groups > 1 and not (isinstance(gate, str) and gate in ("residual", "width")):
        raise ValueError("width groups split the residual branches: use gate='residual' with width_groups > 1")
    if gate == "width" and width_groups < 2:
        raise ValueError("gate='width' gates only the width groups: it needs width_groups > 1")
    args = tuple(example_args) if isinstance(example_args, (tuple, list)) else (example_args,)
    inputs, fixed = bind(model, args, example_kwargs or {})
    names = gate_names(model, gate)
    leaves = resolve_leaves(model, leaf_modules)
    was_training = model.training
    model.eval()  # capture and measure in inference mode: no running statistics change, no dropout
    try:
        program = None
        if isinstance(inputs, torch.Tensor):
            if names:
                check_shapes(model, inputs, names)
            gm, fx_error = _fx_program(model, inputs, [*leaves, *names])
            if gm is None:
                if names or leaves:  # modules kept whole or gated by name are torch.fx's
                    raise ValueError(fx_error)
                try:
                    program = export_program(model, inputs, fixed)
                except ValueError as e:
                    raise ValueError(f"{fx_error}; {e}") from None
        elif names or leaves:
            raise ValueError("gate=[...] and leaf_modules need a model of one tensor input that torch.fx can trace")
        else:
            program = export_program(model, inputs, fixed)
        if program is None:
            order = [n for n in gm.graph.nodes if n.op != "get_attr"]
            out, first, root = order[-1].args[0], 1, model
        else:
            order = [n for n in program.gm.graph.nodes if n.op != "get_attr" and n not in program.context]
            out, first, root = program.output, 0, program.gm
        cut = cuts(order)
        blocks = gated_modules(order, cut, names) if names else residual_blocks(order, cut)
        if not blocks:
            raise ValueError(f"found no residual branch to gate in {type(model).__qualname__} (an addition whose "
                             f"operands both come from one tensor); name modules to gate with gate=[...]")
        if not names:
            name_branches(model, blocks)
        shape = tuple(next(iter(inputs.values())).shape[1:] if isinstance(inputs, dict) else inputs.shape[1:])
        config = {"from_model": type(model).__qualname__, "input_shape": list(shape),
                  "gate": list(names) if names else gate, "leaf_modules": leaves_record(model, leaves)}
        if isinstance(inputs, dict):
            config["inputs"] = {k: [d, list(s)] for k, (d, s) in spec_of(inputs).items()}
        pairs: dict[int, Pair | Attention] = {}
        if width_groups > 1:
            calls = Counter(n.target for n in order if n.op == "call_module")
            context = set() if program is None else program.context
            for b in blocks:  # an attention's heads, else the branch's first layer pair
                split = find_attention(root, b, context) if program is not None else None
                split = split or find_pair(root, b, calls, context)
                if split is not None:
                    pairs[id(b)] = split
            if not pairs:
                raise ValueError(f"no residual branch of {type(model).__qualname__} holds a layer pair to split "
                                 f"into width groups (conv-BN-act-conv or Linear-act-Linear) or attention heads")
            config["width_groups"] = width_groups
        attention = [b.name for b in blocks if isinstance(pairs.get(id(b)), Attention)]
        try:
            net = _build(root, order, first, blocks, shape, config, out, program, model, pairs)
            fixed, why = (_fixed_heads(net, inputs) if attention else []), "other outputs with a head dropped"
        except (ValueError, RuntimeError, TypeError, IndexError) as e:  # a head run alone, when profiling, fails
            if not attention:  # where the code fixes the head count; without heads to blame, the error is the error
                raise
            fixed, why = attention, f"{type(e).__name__} on one head"
        if fixed:  # attention code that fixes its head count: those branches are gated whole
            pairs = {id(b): pairs[id(b)] for b in blocks if id(b) in pairs and b.name not in fixed}
            if not pairs:
                raise ValueError(f"no residual branch of {type(model).__qualname__} can be split into width groups: "
                                 f"its attention code fixes the head count ({why}) and no branch holds a layer pair")
            net = _build(root, order, first, blocks, shape, config, out, program, model, pairs)  # errors are its own
            warnings.warn(f"the heads of {', '.join(fixed)} in {type(model).__qualname__} are not split: its "
                          f"attention code fixes the head count ({why}); those branches keep one gate each",
                          stacklevel=2)
    finally:
        model.train(was_training)
    net.train(was_training)
    return net


def _fx_program(model: nn.Module, x: torch.Tensor, leaves: list) -> tuple[fx.GraphModule | None, str]:
    """The model as a symbolic torch.fx program returning one tensor, or None and why not."""
    try:
        gm = capture(model, x, leaves)
    except ValueError as e:
        return None, str(e)
    out = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    if not isinstance(out, fx.Node) or not is_tensor(out):
        kind = "a dict" if isinstance(out, dict) else "a tuple" if isinstance(out, (tuple, list)) else "no tensor"
        return None, f"{type(model).__qualname__} returns {kind} to torch.fx"
    return gm, ""


def as_supernet(obj: object, input_shape: Sequence[int] | None = None, *, gate: str | Sequence[str] = "residual",
                leaf_modules: Sequence[Leaf] = (), inputs: Mapping[str, Any] | None = None,
                width_groups: int = 1) -> SuperNetwork:
    """A super network from what a user hands bsnet: a SuperNetwork as it is, a plain model through `from_model`.

    Args:
        obj: a bsnet SuperNetwork, or a torch model (whose weights the super network shares, not copies).
        input_shape: one example's shape, e.g. `(3, 32, 32)`: needed for a model, checked for a SuperNetwork.
        gate: as in `from_model`; not used for a SuperNetwork.
        leaf_modules: as in `from_model` (names are matched against the model's submodules); not used for a
            SuperNetwork.
        inputs: for a model of several inputs, their specification as `from_model` records it (`config["inputs"]`).
        width_groups: as in `from_model`; not used for a SuperNetwork.

    Raises:
        ValueError: `obj` is not a torch module; a model without `input_shape`; a SuperNetwork of another input
            shape; or what `from_model` raises.
    """
    shape = None if input_shape is None else tuple(int(s) for s in input_shape)
    if isinstance(obj, SuperNetwork):
        if shape is not None and shape != obj.input_shape:
            raise ValueError(f"the super network takes inputs shaped {obj.input_shape}, not {shape}")
        return obj
    if not isinstance(obj, nn.Module):
        kind = f"the callable {getattr(obj, '__qualname__', '')}" if callable(obj) else f"a {type(obj).__qualname__}"
        raise ValueError(f"expected a torch model or a bsnet SuperNetwork, got {kind}")
    if shape is None:
        raise ValueError(f"making a super network of {type(obj).__qualname__} needs its input shape")
    device = next((p.device for p in obj.parameters()), None) or "cpu"
    if inputs is not None:
        return from_model(obj, (), zeros(check_spec(inputs), shape, 2, device), gate=gate, leaf_modules=leaf_modules,
                          width_groups=width_groups)
    return from_model(obj, torch.zeros(1, *shape, device=device), gate=gate, leaf_modules=leaf_modules,
                      width_groups=width_groups)


# ---- the super network -----------------------------------------------------------------------------
def _fixed_heads(net: SuperNetwork, inputs: Inputs) -> list[str]:
    """The branches whose heads cannot be split: dropping a head must give what the attention computes with that
    head's share of Wo zeroed, which fails where the program's code fixes the head count rather than finding it
    from the weights. Checked once per split, on the example inputs."""
    net.eval()
    fixed = []
    for split in net.graph.width_splits:
        head = net.blocks[split.groups[-1]]  # the last: with gate="width" the first head has no gate
        if not isinstance(head, HeadGroup):
            continue
        mask = net.full_mask()
        mask[net.graph.in_edges(split.groups[-1])[0].gate] = 0
        with torch.no_grad():
            try:
                dropped = net(inputs, mask)
            except Exception:  # noqa: BLE001 - a program of fixed head count may fail on fewer heads
                fixed.append(split.name.removesuffix(".heads"))
                continue
            saved = head.o_w.detach().clone()
            head.o_w.zero_()
            try:
                zeroed = net(inputs, net.full_mask())
            finally:
                head.o_w.copy_(saved)
        if not torch.allclose(dropped, zeroed, atol=1e-5):
            fixed.append(split.name.removesuffix(".heads"))
    return fixed


def _add_split(g: Graph, modules: dict[str, nn.Module], root: nn.Module, b: Block, base: str, prev: str,
               taken: set[str], *, pre: list[fx.Node], pre_out: fx.Node, groups: list[nn.Module], tail: nn.Module,
               post: list[fx.Node], post_in: fx.Node, kind: str, keep_first: bool) -> None:
    """Branch `b` as `prev` -> [its code `pre` up to `pre_out`] -> `groups` (each gated `<b>.<kind[0]><j>`, but the
    first where `keep_first`; declared as the split `<b>.<kind>`) -> `base`, which runs `tail` (the bias left out of
    the groups) on their sum and then the branch's code `post` from `post_in` on."""
    source = prev
    if pre:
        source = node_name(f"{b.name}_in", taken)
        g.add_node(source)
        modules[source] = segment(root, pre, b.x, pre_out)
        g.add_edge(prev, source)
    after = segment(root, post, post_in, b.branch_out)
    modules[base] = tail if isinstance(after, nn.Identity) else nn.Sequential(tail, after)
    names = []
    for j, group in enumerate(groups):
        gate = f"{b.name}.{kind[0]}{j}"
        node = node_name(gate, taken)
        g.add_node(node)
        modules[node] = group
        g.add_edge(source, node, gate=None if keep_first and j == 0 else gate)
        g.add_edge(node, base)
        names.append(node)
    g.add_width_split(f"{b.name}.{kind}", names)


def _build(root: nn.Module, order: list[fx.Node], first: int, blocks: list[Block], input_shape: tuple[int, ...],
           config: dict, out: fx.Node, program: Program | None, model: nn.Module,
           pairs: dict[int, Pair | Attention]) -> SuperNetwork:
    """The chain input -> (branch, skip) -> join -> ... : one gated edge per block, into the join's sum. `order`
    holds the program's nodes from `first` on (before it: the torch.fx program's input); `root` owns what they
    read."""
    context = set() if program is None else program.context
    widths_only = config["gate"] == "width"  # every branch kept, at one group at least
    taken: set[str] = set()
    g = Graph(input="input", output="")
    modules: dict[str, nn.Module] = {}
    sources: dict[str, dict[str, Source | None]] = {}  # where each split's weights live in the model, by role
    prev = node_name("input", taken)
    g.add_node(prev)
    modules[prev] = segment(root, order[first:blocks[0].start + 1], None if first == 0 else order[0],
                             blocks[0].x, context=context)
    for i, b in enumerate(blocks):
        base = node_name(b.name, taken)
        g.add_node(base)
        split = pairs.get(id(b))
        if isinstance(split, Attention):  # one group per head; Wo's bias where they are summed
            heads, o_b = head_groups(root, split, context)
            sources[f"{b.name}.heads"] = split.sources
            _add_split(g, modules, root, b, base, prev, taken, pre=split.pre, pre_out=split.x, groups=heads,
                       tail=nn.Identity() if o_b is None else Bias(o_b, last=True), post=split.post,
                       post_in=split.out, kind="heads", keep_first=widths_only)
        elif split is not None:  # the pair's width groups; its second layer's bias where they are summed
            groups, bias = split_layer_pair(split.layers, config["width_groups"], b.name)
            (first_w, first_b), (second_w, second_b) = layer_sources(split.layers[0]), layer_sources(split.layers[-1])
            sources[f"{b.name}.width"] = {"first_w": first_w, "first_b": first_b, "second_w": second_w,
                                          "second_b": second_b}
            _add_split(g, modules, root, b, base, prev, taken, pre=split.pre, pre_out=split.first.args[0],
                       groups=groups, tail=bias, post=split.post, post_in=split.second, kind="width",
                       keep_first=widths_only)
        elif b.module is not None:
            modules[base] = Increment(model.get_submodule(b.module))
            g.add_edge(prev, base)
        else:
            modules[base] = segment(root, b.branch, b.x, b.branch_out, context=context)
            g.add_edge(prev, base)
        skip = prev
        if b.skip_out is not None:
            skip = node_name(f"{b.name}_skip", taken)
            g.add_node(skip)
            modules[skip] = segment(root, b.skip, b.x, b.skip_out, context=context)
            g.add_edge(prev, skip)
        join = node_name(f"{b.name}_add", taken)
        g.add_node(join)
        g.add_edge(base, join, gate=None if widths_only else b.name)
        g.add_edge(skip, join)
        last = i + 1 == len(blocks)
        stop = len(order) - 1 if last else blocks[i + 1].start + 1
        end = out if last else blocks[i + 1].x
        modules[join] = segment(root, order[b.end + 1:stop], b.join, end, out_of_place=True, context=context)
        prev = join
    g.output = prev
    if program is None:
        net = SuperNetwork(g, modules, input_shape, name=None, config=config)
    else:
        needed = list(dict.fromkeys(n for m in modules.values() for n in getattr(m, "reads", ())))
        spec = None if program.names is None else {k: (d, tuple(s)) for k, (d, s) in config["inputs"].items()}
        net = SuperNetwork(g, modules, input_shape, name=None, config=config,
                           context=context_module(program, needed), input_spec=spec)
    net.split_sources = sources  # what `bsnet.export.save_pretrained` writes a split's kept weights back into
    return net
