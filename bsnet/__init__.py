"""bsnet: learn a network's architecture and weights together under an explicit cost budget."""
from bsnet.costs import Cost, FlopsCost, FunctionCost, LatencyCost, ParallelCost, ParamsCost
from bsnet.fabrics import create_supernet, list_supernets, register_supernet
from bsnet.gates import BernoulliGates
from bsnet.graph import Graph
from bsnet.supernet import SuperNetwork

__version__ = "0.1.0"

__all__ = ["BernoulliGates", "Cost", "FlopsCost", "FunctionCost", "Graph", "LatencyCost", "ParallelCost",
           "ParamsCost", "SuperNetwork", "create_supernet", "list_supernets", "register_supernet", "__version__"]
