"""The real pair and how it is served: the one place the benchmarks, the distillation and the e2e test read it from
(``make serve`` in the Makefile spells the same values; keep them together).

``DTYPE``: float32. Measured 2026-12-02 on the 2-core AMD EPYC with AVX2 and no AVX-512 (docs/benchmarks.md):
bfloat16 gained little without speculation (11.5 against 10.9 tok/s) and halved the speed with the EAGLE-3 head (6.2
against 11.0 tok/s). A CPU with AVX-512 BF16 may rank them differently; that was not measured.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.path.join(ROOT, "models", "smollm2-135m-instruct")
DRAFT = os.path.join(ROOT, "models", "smollm2-eagle3")
DTYPE = "float32"
K = 3  # num_speculative_tokens of the EAGLE-3 head
MAX_MODEL_LEN = 2048
