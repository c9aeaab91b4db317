"""Benchmarks and evaluations, one command per module (``python -m scripts.bench.<name>``): the plugin's step
(``bench_step``), the verification op (``bench_kernel``), the engine end to end (``bench_e2e``, ``bench_e2e_text``),
the drafter's sampling (``bench_draft_sampling``), accuracy (``eval_accuracy``), the lossy verifiers on one curve
(``frontier``), seeded outputs across concurrency (``check_seeded_batch``), a worker profile (``profile_step``), and
for GPU machines without vLLM ``extract_vllm_stock`` and ``gpu_checks.sh``. Results go to ``results/``, one schema
(``scripts/harness/results.py``)."""
