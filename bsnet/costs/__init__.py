"""Cost models: functions of an architecture's live sub-graph, behind one interface (`Cost`), registered by name."""
from bsnet.costs.base import AdditiveCost, Cost, FunctionCost
from bsnet.costs.registry import all_costs, create_cost, list_costs, register_cost
from bsnet.costs.flops import FlopsCost  # the built-in costs register themselves on import
from bsnet.costs.latency import LatencyCost, measure_latency
from bsnet.costs.params import ParamsCost
from bsnet.costs.parallel import ParallelCost

__all__ = ["AdditiveCost", "Cost", "FlopsCost", "FunctionCost", "LatencyCost", "ParallelCost", "ParamsCost",
           "all_costs", "create_cost", "list_costs", "measure_latency", "register_cost"]
