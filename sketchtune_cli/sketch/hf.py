"""The transformers side of the sketch format: a quantization config class and an ``HfQuantizer`` that
loads pre-built sketches (``quant_method: "sketchtune"``): the one reader of the checkpoints that
:mod:`.format` writes (``load_sketch`` is ``from_pretrained`` with strict key checks). The LUTs' dtype comes
from :func:`.format.stored_lut_dtype`.
Registered by ``export.hf_integration`` (an import hook ``import sketchtune_cli`` installs), because
importing transformers' quantizer base is slow."""
from __future__ import annotations

from pathlib import Path

from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .convert import add_empty_sketches, materialize_dense
from .format import PACKING, QUANT_METHOD, read_sketch_config, stored_lut_dtype


class SketchTuneConfig(QuantizationConfigMixin):
    """Mirror of the ``quantization_config`` that ``save_sketch`` writes. Unknown keys (e.g. the compress
    settings a sketch records) are kept so a load + ``save_pretrained`` round-trip loses nothing."""

    def __init__(self, bits: int = 4, groups_per_row: int = 4, modules: list[str] | None = None,
                 lut_dtype: str = "float32", packing: str = PACKING, format_version: int = 1, **extra):
        extra.pop("quant_method", None)
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.bits, self.groups_per_row = bits, groups_per_row
        self.modules = list(modules or [])
        self.lut_dtype, self.packing = lut_dtype, packing
        for key, value in extra.items():
            setattr(self, key, value)
        self.post_init()

    def post_init(self):
        if self.packing != PACKING:
            raise ValueError(f"sketchtune cannot read code packing {self.packing!r} (expects {PACKING!r})")
        if not self.modules:
            raise ValueError("sketchtune quantization_config lists no sketched modules")


class SketchTuneHfQuantizer(HfQuantizer):
    """Loads a sketch: before the weights arrive, the listed linears become empty ``SketchedLinear``
    layers whose ``lut`` / ``codes`` (/ ``bias``) names match the checkpoint, so transformers' ordinary
    loader fills them. LUTs load in their stored ``lut_dtype`` when the model is built in the sketch's own
    dtype (``dtype="auto"``, as ``load_sketch`` without ``dtype``), else in the dtype asked for; codes stay
    uint8."""

    requires_calibration = True  # a sketch needs calibration data: only pre-built sketches load
    quantization_config: SketchTuneConfig

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        cfg = self.quantization_config
        first = model.get_submodule(cfg.modules[0])
        lut_dtype = built = first.weight.dtype if getattr(first, "weight", None) is not None else None
        if checkpoint_files:  # the sketch's own dense dtype, from its config.json beside the weights
            saved, _ = read_sketch_config(Path(checkpoint_files[0]).parent)
            if str(built).removeprefix("torch.") == saved.get("dtype", saved.get("torch_dtype")):
                lut_dtype = stored_lut_dtype({"lut_dtype": cfg.lut_dtype})
        add_empty_sketches(model, cfg.modules, cfg.bits, cfg.groups_per_row, dtype=lut_dtype, device="meta")
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        """Only the LUTs train (the method's recipe): freeze embeddings, norms and lm_head, like a PEFT
        model freezes its base. ``requires_grad_(True)`` on a module undoes it for full training."""
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith(".lut"))
        return model

    def _dequantize(self, model, dtype=None):
        """``model.dequantize()``: every SketchedLinear becomes an nn.Linear holding its ``W_hat``."""
        return materialize_dense(model, dtype)

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        """The LUTs are the trainable parameters: transformers' Trainer may train them without adapters."""
        return True

    def is_serializable(self):
        return True
