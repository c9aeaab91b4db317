"""The benchmark and evaluation harness shared by the scripts in ``scripts/``; not part of the shipped library.

- ``timing``: the timing rule (quantiles), environment columns, peak bandwidth, progress, plots.
- ``results``: the one long-format schema of ``results/*.csv`` (fixed columns, configuration, ``metric``/``value``),
  its writer and reader.
- ``engine``: one vLLM engine per process (``python -m scripts.harness.engine --engine-worker JOB OUT``), its
  speculative config and spec-decode counters.
- ``intervals``: confidence intervals (Wilson, paired differences, means).
- ``task``: the synthetic GSM8K-format word-problem task the bundled models are trained and evaluated on.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
