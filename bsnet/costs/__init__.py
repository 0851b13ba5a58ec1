"""Cost models: functions of an architecture's live sub-graph, behind one interface (`Cost`)."""
from bsnet.costs.base import AdditiveCost, Cost, FunctionCost
from bsnet.costs.flops import FlopsCost
from bsnet.costs.latency import LatencyCost, measure_latency
from bsnet.costs.params import ParamsCost
from bsnet.costs.parallel import ParallelCost

__all__ = ["AdditiveCost", "Cost", "FlopsCost", "FunctionCost", "LatencyCost", "ParallelCost", "ParamsCost",
           "measure_latency"]
