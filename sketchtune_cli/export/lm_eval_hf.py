"""lm-eval's command line with the sketchtune transformers plugin registered.

``lm_eval --model hf --model_args pretrained=<hf-sketch export>`` fails in a plain ``lm_eval`` process:
transformers does not know ``quant_method: sketchtune`` until ``sketchtune_cli`` is imported. This entry
point imports it first and then hands over to lm-eval's own CLI, all arguments unchanged:

    python -m sketchtune_cli.export.lm_eval_hf --model hf --model_args pretrained=out/l3-sketch --tasks gsm8k

(hf-dense exports need none of this: they are plain checkpoints for the plain ``lm_eval``.)"""
from __future__ import annotations


def main() -> None:
    from .hf_integration import register

    register()
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
