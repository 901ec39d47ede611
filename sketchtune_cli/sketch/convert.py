"""Model conversion both ways: nn.Linear <-> SketchedLinear, and locating the layers to sketch."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from sketchtune_kernels import pack_codes

from .linear import SketchedLinear, check_sketch_shape


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of decoder blocks (``model.layers`` for Llama/Mistral/Qwen2...): the longest
    ModuleList in the model."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of decoder blocks (nn.ModuleList)")
    return best


def _matches(name: str, patterns: list[str]) -> bool:
    """A pattern matches a full module name by glob, or its last component(s) by plain name
    (``q_proj`` matches ``model.layers.0.self_attn.q_proj``)."""
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.endswith("." + p) for p in patterns)


def find_target_linears(
    model: nn.Module, targets: list[str] | None = None, ignore: list[str] | None = None
) -> dict[str, nn.Module]:
    """Linear layers to sketch, in model order. Default: every nn.Linear (or already-sketched layer)
    inside the decoder blocks; embeddings and lm_head stay dense."""
    blocks_name, _ = decoder_layers(model)
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, SketchedLinear)):
            continue
        if targets:
            if not _matches(name, targets):
                continue
        elif not name.startswith(blocks_name + "."):
            continue
        if ignore and _matches(name, ignore):
            continue
        found[name] = module
    return found


@dataclass
class Sketch:
    """One layer's sketch: ``lut`` [rows, G, 2^bits], unpacked ``codes`` uint8 [rows, G, cols/G]."""

    lut: torch.Tensor
    codes: torch.Tensor
    bits: int

    @property
    def groups_per_row(self) -> int:
        return self.lut.shape[1]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def sketched_from_linear(linear: nn.Module, sketch: Sketch, lut_dtype: torch.dtype | None = None) -> SketchedLinear:
    rows, cols = linear.out_features, linear.in_features
    layer = SketchedLinear(
        cols, rows, sketch.bits, sketch.groups_per_row, bias=linear.bias is not None,
        dtype=lut_dtype or sketch.lut.dtype, device=sketch.lut.device,
    )
    if tuple(sketch.codes.shape) != (rows, sketch.groups_per_row, cols // sketch.groups_per_row):
        raise ValueError(f"codes of shape {tuple(sketch.codes.shape)} do not fit a {rows}x{cols} layer")
    with torch.no_grad():
        layer.lut.copy_(sketch.lut)
        layer.codes.copy_(pack_codes(sketch.codes.to(torch.uint8), sketch.bits))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
    return layer


def replace_with_sketches(model: nn.Module, sketches: dict[str, Sketch], lut_dtype: torch.dtype | None = None) -> nn.Module:
    """Swap the named nn.Linear layers for SketchedLinear layers built from ``sketches`` (in place)."""
    for name, sketch in sketches.items():
        _set_module(model, name, sketched_from_linear(model.get_submodule(name), sketch, lut_dtype))
    return model


def add_empty_sketches(
    model: nn.Module, names: list[str], bits: int, groups_per_row: int, dtype: torch.dtype, device=None
) -> nn.Module:
    """Replace the named linears by zero-initialised SketchedLinear layers of the same shape (a skeleton
    to load a saved sketch into; works on the meta device)."""
    for name in names:
        linear = model.get_submodule(name)
        check_sketch_shape(linear.in_features, bits, groups_per_row, name)
        layer = SketchedLinear(
            linear.in_features, linear.out_features, bits, groups_per_row,
            bias=linear.bias is not None, dtype=dtype, device=device,
        )
        _set_module(model, name, layer)
    return model


def sketched_layers(model: nn.Module) -> dict[str, SketchedLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SketchedLinear)}


def materialize_dense(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every SketchedLinear by an nn.Linear holding ``W_hat`` (in place): a plain model."""
    for name, layer in sketched_layers(model).items():
        weight = layer.dense_weight().detach()
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          dtype=dtype or weight.dtype, device=weight.device)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if layer.bias is not None:
                dense.bias.copy_(layer.bias)
        _set_module(model, name, dense)
    return model


def lut_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the sketched parameters, keyed ``<module>.lut``: what a fine-tune produces."""
    return {f"{n}.lut": m.lut.detach() for n, m in sketched_layers(model).items()}


def load_luts(model: nn.Module, luts: dict[str, torch.Tensor]) -> None:
    """Copy LUTs (``<module>.lut`` keys) into a sketched model; every key must match a layer and shape."""
    layers = sketched_layers(model)
    expected = {f"{n}.lut" for n in layers}
    missing, extra = expected - set(luts), set(luts) - expected
    if missing or extra:
        raise ValueError(f"LUT keys do not match the sketch: {len(missing)} missing, {len(extra)} unexpected "
                         f"(e.g. {sorted(missing or extra)[0]})")
    with torch.no_grad():
        for n, layer in layers.items():
            t = luts[f"{n}.lut"]
            if t.shape != layer.lut.shape:
                raise ValueError(f"{n}.lut has shape {tuple(t.shape)}, the sketch expects {tuple(layer.lut.shape)}")
            layer.lut.copy_(t)
