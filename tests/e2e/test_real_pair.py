"""`vllm serve` on the real pair, as `make serve` runs it: SmolLM2-135M-Instruct (float32) with its EAGLE-3 draft,
probabilistic drafting, EARS alpha 0.3. One server for the module (~1 min to start on 2 cores).

What is checked: the OpenAI chat API answers; on uncertain creative prompts at T = 0.9 the target's mean uncertainty
is high (it is what EARS exploits; the bundled tiny pair had 0.08), drafts are accepted, EARS tolerance-accepts
some, and the reported TV cost is consistent with its definition (> 0, at most alpha * h per decided draft); per
request alpha 0 is the standard rule (no tolerance, no cost).
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from scripts.harness import real_pair

from .conftest import ROOT, Server, delta

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TARGET, DRAFT = real_pair.TARGET, real_pair.DRAFT
SPEC = {"method": "eagle3", "model": DRAFT, "num_speculative_tokens": real_pair.K,
        "draft_sample_method": "probabilistic", "rejection_sampler": "ears", "alpha": 0.3}
PROMPTS = [json.loads(line)["prompt"] for line in (ROOT / "data" / "prompts_creative.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(TARGET, "model.safetensors").exists():
        pytest.fail(f"{TARGET} missing: `make models` builds it")
    s = Server("real", SPEC, log_dir=tmp_path_factory.mktemp("real"), model=TARGET, dtype=real_pair.DTYPE,
               max_model_len=real_pair.MAX_MODEL_LEN, env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def chat(server, prompt: str, **kw) -> str:
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", timeout=600)
    out = c.chat.completions.create(model=TARGET, messages=[{"role": "user", "content": prompt}], **kw)
    return out.choices[0].message.content


def test_real_pair_serves_chat_with_ears(server):
    print(f"real pair start-up: {server.startup_s:.0f} s")
    assert "EARS rejection sampler active: alpha=0.3" in server.log_text()
    text = chat(server, "What is the capital of France?", max_tokens=24, temperature=0.0)
    assert "Paris" in text


def test_uncertain_prompts_accept_drafts_and_report_the_cost(server):
    before = server.metrics()
    for i, prompt in enumerate(PROMPTS[:6]):
        assert chat(server, prompt, max_tokens=48, temperature=0.9, seed=i)
    after = server.metrics()
    d = lambda name: delta(after, before, name)  # noqa: E731
    verified = d("vllm:ears_num_verified_draft_tokens_total")
    h, tv = d("vllm:ears_uncertainty_sum_total") / verified, d("vllm:ears_tv_cost_sum_total") / verified
    acceptance = d("vllm:spec_decode_num_accepted_tokens_total") / d("vllm:spec_decode_num_draft_tokens_total")
    print(f"real pair, 6 creative prompts, T=0.9: acceptance {acceptance:.3f}, mean h {h:.3f}, TV cost {tv:.4f}")
    assert h > 0.2  # measured ~0.5: an uncertain target
    assert acceptance > 0.05 and d("vllm:ears_num_tolerance_accepted_tokens_total") > 0
    # Per decided draft, min(1, p/q + alpha*h) - min(1, p/q) <= alpha*h, so the mean cost is at most alpha * mean h.
    assert 0.0 < tv <= 0.3 * h + 1e-6


def test_per_request_alpha_0_costs_nothing(server):
    before = server.metrics()
    chat(server, PROMPTS[7], max_tokens=48, temperature=0.9, seed=1, extra_body={"vllm_xargs": {"ears_alpha": 0.0}})
    after = server.metrics()
    assert delta(after, before, "vllm:ears_num_verified_draft_tokens_total") > 0
    assert delta(after, before, "vllm:ears_num_tolerance_accepted_tokens_total") == 0
    assert delta(after, before, "vllm:ears_tv_cost_sum_total") == 0.0
