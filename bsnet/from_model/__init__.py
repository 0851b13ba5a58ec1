"""from_model: a super network made from a user's own (trained) PyTorch model, captured with torch.fx or torch.export.

The model's forward is captured once as an fx graph and cut into a chain of bsnet nodes. A *cut* is a point of
the program where exactly one tensor is alive besides the *context* (what a torch.export program computes from its
inputs alone: an attention mask, the batch size, read by every node that needs it): everything after it depends on
what came before only through that tensor, so the program can be split there into two modules joined by one bsnet
edge.

With `gate="residual"` every residual addition `out = branch(x) + skip(x)` whose operands both come from the
same cut `x` (and that is itself a cut) becomes a gated block:

    pre ──> branch ──(gated)──> join       join = the engine's sum, then the code up to the next block
     │                           ^
     └──> skip (or a plain edge) ┘

`branch` holds the fx nodes computing the branch from `x`, `skip` the identity or a projection (1x1 conv + BN);
dropping the gate leaves the skip path and the branch is not executed. Everything else (`torch.cat`, attention
matmuls, heads) stays inside fixed nodes, so only single tensors and additions ever cross bsnet edges. Nested
residuals (an addition inside a gated branch) stay inside their branch.

With `gate=["layer1.0", ...]` the named modules (which must keep their input's shape) are traced whole and made
optional: the module's node computes `module(x) - x` and feeds the join through a gated edge, beside a fixed
identity edge, so the join's sum is `module(x)` when kept and `x` when dropped.

With `gate="width"` (and `width_groups` > 1) the branches are found as for `"residual"` but their edges into the
join carry no gate, nor does each split's first group: only the other width groups are gated, so a variant keeps
every branch, at one group at least.

The node modules are `torch.fx.GraphModule`s over the model's own submodules and parameters (shared, not
copied): the super network starts from the trained weights, and training it trains the model. Pass
`copy.deepcopy(model)` to keep the original untouched. Width groups and attention heads are the exception: they hold
copies of slices of the weights.

The steps, in the order data flows through them: `trace` (symbolic torch.fx: one input, leaf modules) or
`capture` (torch.export: tensors by name, the context computed from the inputs alone), `blocks` (cuts, residual
blocks and their branches, gate names), `pairs` and `heads` (with `width_groups` > 1: a branch's layer pair or
attention heads split into gated groups), `nodes` (the node modules: program segments, the input node, the context)
and `build` (the SuperNetwork, `from_model` itself). `bsnet.from_model` is the function; import the steps by name
(`from bsnet.from_model.blocks import cuts`).
"""
from bsnet.from_model.build import Increment, as_supernet, from_model

__all__ = ["Increment", "as_supernet", "from_model"]
