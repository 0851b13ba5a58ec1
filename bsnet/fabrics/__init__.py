"""Built-in super networks, one file each, registered by name."""
from bsnet.fabrics import cnf, resnet_fabric  # noqa: F401  (registers them)
from bsnet.fabrics.registry import create_supernet, list_supernets, register_supernet, supernet_config

__all__ = ["create_supernet", "list_supernets", "register_supernet", "supernet_config"]
