"""`python -m sketchtune_cli` (and `accelerate launch -m sketchtune_cli ...`)."""
from sketchtune_cli.cli import entry

entry()
