"""The model pairs and their data, one command per module (``python -m scripts.models.<name>``): ``check_models``
(``make models``), ``train_pair`` (the bundled pair), ``build_real_target`` (SmolLM2-135M-Instruct from its registry
package), ``distill_draft`` (its EAGLE-3 head), ``real_prompts`` (the prompt files), ``eval_pair`` (the bundled pair's
figures)."""
