"""`python -m sketchtune_cli` (and `accelerate launch -m sketchtune_cli ...`)."""
from .cli import entry

entry()
