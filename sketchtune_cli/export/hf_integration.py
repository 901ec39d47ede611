"""Teach transformers to load sketches: ``AutoModelForCausalLM.from_pretrained(sketch_dir)`` after
``import sketchtune_cli``.

A sketch's ``config.json`` carries ``quantization_config = {quant_method: "sketchtune", ...}``. transformers
dispatches on ``quant_method`` through its public registries (``register_quantization_config`` /
``register_quantizer``); our quantizer swaps the listed linears for empty ``SketchedLinear`` layers before
the weights load, so the checkpoint's ``<module>.lut`` / ``<module>.codes`` tensors land in them by name.

Importing ``transformers.quantizers`` costs seconds, far too much for ``import sketchtune_cli`` (every CLI
call pays it). So ``install()`` registers at once only if transformers' quantizer registry is already
imported; otherwise it leaves a one-shot import hook that registers right after that module first loads.
Either way a process that imports ``sketchtune_cli`` and then loads a sketch finds the plugin.
"""
from __future__ import annotations

import importlib.abc
import logging
import sys

log = logging.getLogger(__name__)
_REGISTRY_MODULE = "transformers.quantizers.auto"
_registered = False


def install() -> None:
    """Register now if transformers' quantizer registry is loaded, else when it loads (cheap either way)."""
    if _REGISTRY_MODULE in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def register() -> None:
    """Add the sketchtune config class and quantizer to transformers' registries (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING,
        register_quantization_config,
        register_quantizer,
    )

    from ..sketch.hf import QUANT_METHOD, SketchTuneConfig, SketchTuneHfQuantizer

    _registered = True
    if QUANT_METHOD in AUTO_QUANTIZATION_CONFIG_MAPPING:  # e.g. registered by another copy of the package
        return
    register_quantization_config(QUANT_METHOD)(SketchTuneConfig)
    register_quantizer(QUANT_METHOD)(SketchTuneHfQuantizer)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds transformers' quantizer registry the normal way and runs ``register()`` once it has executed."""

    def find_spec(self, name, path, target=None):
        if name != _REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        try:
            register()
        except Exception as e:  # never break `import transformers` because of the plugin
            log.warning("sketchtune could not register its transformers quantizer: %s", e)

    def __getattr__(self, name):  # get_source, get_filename... as the real loader has them
        return getattr(self.inner, name)
