"""From a found architecture to ordinary networks: an in-memory module, safetensors, ONNX, readable Python."""
from bsnet.export.files import FORMATS, export_file, export_paths
from bsnet.export.hugging_face import save_pretrained
from bsnet.export.module import attribute_name, build_network, export_module
from bsnet.export.onnx import export_onnx
from bsnet.export.pt import read_weights, save_weights
from bsnet.export.python_source import export_python

__all__ = ["FORMATS", "attribute_name", "build_network", "export_file", "export_module", "export_onnx", "export_paths",
           "export_python", "read_weights", "save_pretrained", "save_weights"]
