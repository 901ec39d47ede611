"""sketchtune: compress an LLM into fine-tunable 4-bit sketches, fine-tune only the sketches, evaluate, export."""
__version__ = "0.1.0"

from .export.hf_integration import install as _install_hf_plugin  # noqa: E402  (lets from_pretrained load sketches; cheap)

_install_hf_plugin()
