"""sketchtune: compress an LLM into fine-tunable 4-bit sketches, fine-tune only the sketches, evaluate, export."""
__version__ = "0.1.0"
