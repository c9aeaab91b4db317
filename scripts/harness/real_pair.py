"""The real pair and how it is served: the one place the benchmarks, the distillation and the e2e test read it from
(``make serve`` in the Makefile spells the same values; keep them together).

``DTYPE``: float32, the faster of the two on the CPU it was chosen on (bfloat16 against float32 with and without the
EAGLE-3 head: docs/benchmarks.md).
"""

import os

from scripts.harness import ROOT

TARGET = os.path.join(ROOT, "models", "smollm2-135m-instruct")
DRAFT = os.path.join(ROOT, "models", "smollm2-eagle3")
DTYPE = "float32"
K = 3  # num_speculative_tokens of the EAGLE-3 head
MAX_MODEL_LEN = 2048
