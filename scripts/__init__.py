"""Benchmarks, evaluations and model building for ears_vllm; not part of the shipped library (the wheel holds
``ears_vllm`` only). Each module with a ``main`` is a command, run from the repository root as
``python -m scripts.<name>`` (``python -m scripts.bench_kernel --quick``, ``python -m scripts.check_models``, ...);
the code they share is in ``scripts.harness``.
"""
