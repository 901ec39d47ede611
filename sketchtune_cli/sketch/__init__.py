"""The sketch format: SketchedLinear, conversion both ways, and the on-disk layout."""
from .convert import (
    Sketch,
    add_empty_sketches,
    decoder_layers,
    find_target_linears,
    load_luts,
    lut_state_dict,
    materialize_dense,
    replace_with_sketches,
    sketched_layers,
)
from .format import QUANT_METHOD, load_sketch, read_sketch_config, save_sketch
from .linear import SketchedLinear, check_sketch_shape

__all__ = [
    "Sketch", "SketchedLinear", "QUANT_METHOD", "add_empty_sketches", "check_sketch_shape", "decoder_layers",
    "find_target_linears", "load_luts", "load_sketch", "lut_state_dict", "materialize_dense",
    "read_sketch_config", "replace_with_sketches", "save_sketch", "sketched_layers",
]
