"""``EARS_VLLM_FIXES``: with 0 the plugin leaves vLLM's own code paths as vLLM ships them (no engine; each case a
fresh process that registers the plugin and imports the patched vLLM modules).

Off: the CPU expand fallback, the CPU draft sampling, the seeded-draft noise and the runner's jobs 2 and 3 are
vLLM's own; the runner's EARS job stays; one log line says so. An EARS runner on CPU applies the expand fix itself
(its sampler calls vLLM's expand). On (unset or 1): every fix applied. A bad value: one line, before any model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from .conftest import engine_env, free_port, serve_command

pytestmark = pytest.mark.vllm

PROBE = r"""
import json, types
import torch
import logging
logging.basicConfig(level=logging.INFO)  # a handler, as a vLLM process has one when it loads its plugins
from ears_vllm.vllm_plugin import register
register()
import vllm.utils.cpu_triton_utils as ctu
import vllm.v1.spec_decode.llm_base_proposer as lbp
import vllm.v1.worker.gpu_model_runner as gmr
from vllm.v1.sample.sampler import Sampler
from ears_vllm.vllm_plugin import config
from ears_vllm.vllm_plugin.patches import cpu_triton_utils, fixes_enabled, gpu_model_runner
from ears_vllm.vllm_plugin.patches._patch import MARK

def marked(fn):
    return hasattr(fn, MARK)

out = dict(
    expand=ctu._expand_kernel_impl is cpu_triton_utils.expand_kernel_impl,
    draft_sampling=bool(getattr(lbp.compute_probs_and_sample_next_token, "__ears_cpu_draft_sampling__", False)),
    seeded_draft_noise=marked(lbp.SpecDecodeBaseProposer._sample_from_logits),
    runner_ears=marked(gmr.GPUModelRunner.__init__) and marked(gmr.GPUModelRunner.sample_tokens),
    runner_rewind=marked(gmr.GPUModelRunner._bookkeeping_sync),
    runner_draft_keys=marked(gmr.GPUModelRunner.propose_draft_token_ids),
)

# An EARS runner on CPU (a stand-in with what the EARS job reads), built through the job-1 wrapper.
class Runner:
    def __init__(self, vllm_config):
        self.rejection_sampler = object()
        self.sampler = Sampler()
        self.speculative_config = types.SimpleNamespace(method="ngram", num_speculative_tokens=2,
                                                        rejection_sample_method="standard")
        self.device = torch.device("cpu")
        self.max_num_reqs = 4
        self.input_batch = types.SimpleNamespace(logitsprocs=types.SimpleNamespace(argmax_invariant=[]))

    def sample_tokens(self):
        pass

    def _update_states(self, scheduler_output):
        pass

    def _bookkeeping_sync(self):
        pass

    def propose_draft_token_ids(self):
        pass

settings = config.EarsSettings("ears", 0.3)
config.EarsSettings.of = classmethod(lambda cls, vllm_config: settings)
gpu_model_runner.apply(types.SimpleNamespace(GPUModelRunner=Runner), fixes=fixes_enabled())
runner = Runner(None)
out["ears_runner_sampler"] = type(runner.rejection_sampler).__name__
out["expand_after_ears_runner"] = ctu._expand_kernel_impl is cpu_triton_utils.expand_kernel_impl
print("PROBE " + json.dumps(out))
"""


def probe(value: str | None) -> tuple[dict, str]:
    env = engine_env()
    env.pop("EARS_VLLM_FIXES", None)
    if value is not None:
        env["EARS_VLLM_FIXES"] = value
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))
    return json.loads(line[len("PROBE "):]), output


@pytest.mark.parametrize("value", [None, "1"])
def test_fixes_on_by_default(value):
    got, output = probe(value)
    assert got == dict(expand=True, draft_sampling=True, seeded_draft_noise=True, runner_ears=True,
                       runner_rewind=True, runner_draft_keys=True, ears_runner_sampler="EarsRejectionSampler",
                       expand_after_ears_runner=True), got
    assert "EARS_VLLM_FIXES=0" not in output


def test_fixes_off_leaves_vllm_alone_but_ears_keeps_what_it_needs():
    got, output = probe("0")
    assert got == dict(expand=False, draft_sampling=False, seeded_draft_noise=False, runner_ears=True,
                       runner_rewind=False, runner_draft_keys=False, ears_runner_sampler="EarsRejectionSampler",
                       expand_after_ears_runner=True), got
    lines = [x for x in output.splitlines() if "EARS_VLLM_FIXES=0" in x]
    assert len(lines) == 1 and "cpu_triton_utils" in lines[0] and "draft_sampling_cpu" in lines[0], output[-2000:]


@pytest.mark.slow
def test_bad_value_is_one_line_before_any_model():
    env = engine_env()
    env["EARS_VLLM_FIXES"] = "yes"
    start = time.monotonic()
    proc = subprocess.run(serve_command(free_port(), None), capture_output=True, text=True, env=env, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert time.monotonic() - start < 90
    message = "EARS_VLLM_FIXES='yes' is not allowed: use 1 (the default: vLLM fixes on) or 0 (off)"
    lines = [x for x in output.splitlines() if message in x]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output[-2000:]
    assert "Traceback" not in output
    assert "Loading weights" not in output and "Starting to load model" not in output
