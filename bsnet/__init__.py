"""bsnet: learn a network's architecture and weights together under an explicit cost budget."""
from bsnet.architecture import Architecture
from bsnet.costs import Cost, FlopsCost, FunctionCost, LatencyCost, ParallelCost, ParamsCost, list_costs, register_cost
from bsnet.data import list_datasets, register_dataset
from bsnet.fabrics import create_supernet, list_supernets, register_supernet
from bsnet.gates import BernoulliGates
from bsnet.graph import Graph
from bsnet.supernet import SuperNetwork
from bsnet.export import build_network, export_module  # noqa: E402
from bsnet.export.load import load  # noqa: E402
from bsnet.from_model import from_model  # noqa: E402
from bsnet.config import RunConfig  # noqa: E402
from bsnet.pipeline import run_search  # noqa: E402
from bsnet.fit import FitReport, fit  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Architecture", "BernoulliGates", "Cost", "FitReport", "FlopsCost", "FunctionCost", "Graph",
           "LatencyCost", "ParallelCost", "ParamsCost", "RunConfig", "SuperNetwork", "build_network",
           "create_supernet", "export_module", "fit", "from_model", "list_costs", "list_datasets", "list_supernets",
           "load", "register_cost", "register_dataset", "register_supernet", "run_search", "__version__"]
