"""bsnet: learn a network's architecture and weights together under an explicit cost budget."""
from bsnet.architecture import Architecture
from bsnet.costs import Cost, FlopsCost, FunctionCost, LatencyCost, ParallelCost, ParamsCost
from bsnet.fabrics import create_supernet, list_supernets, register_supernet
from bsnet.gates import BernoulliGates
from bsnet.graph import Graph
from bsnet.supernet import SuperNetwork
from bsnet.export import export_module  # noqa: E402
from bsnet.export.load import load  # noqa: E402
from bsnet.from_model import from_model  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Architecture", "BernoulliGates", "Cost", "FlopsCost", "FunctionCost", "Graph", "LatencyCost",
           "ParallelCost", "ParamsCost", "SuperNetwork", "create_supernet", "export_module", "from_model",
           "list_supernets", "load", "register_supernet", "__version__"]
