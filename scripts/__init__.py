"""The lab around ears_vllm; not part of the shipped library (the wheel holds ``ears_vllm`` only). Run every command
from the repository root as ``python -m scripts.<package>.<name>``:

- ``scripts.bench``: benchmarks and evaluations (``bench_step``, ``bench_kernel``, ``bench_e2e``, ``frontier``, ...);
- ``scripts.models``: building and checking the model pairs and their data (``check_models``, ``train_pair``,
  ``build_real_target``, ``distill_draft``, ``real_prompts``, ``eval_pair``);
- ``scripts.harness``: the code both share (timing, engines, intervals, the synthetic task).
"""
