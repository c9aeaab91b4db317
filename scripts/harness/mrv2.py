"""Model Runner V2's rejection sampler outside a runner: the pieces of MRV2's ``Sampler``, ``InputBatch`` and
``SpeculativeConfig`` that ``RejectionSampler.__call__`` reads, for the in-process tests and ``bench_step --device
cuda``. MRV2's own code does the work: ``apply_sampling_params`` is MRV2's ``Sampler.apply_sampling_params``
(vLLM 0.32 and 0.33 alike), run over MRV2's ``SamplingStates`` when they are given (CUDA), else the identity (the
logits are taken as already processed, as the CPU tests give them).
"""

from __future__ import annotations

import types

import numpy as np
import torch


def spec_config(k: int, method: str = "standard") -> types.SimpleNamespace:
    """What MRV2's ``RejectionSampler.__init__`` reads of a ``SpeculativeConfig``."""
    return types.SimpleNamespace(num_speculative_tokens=k, enable_adaptive_verification=False,
                                 rejection_sample_method=method, synthetic_acceptance_rates=None,
                                 fly_entropy_threshold=0.3, fly_entropy_top_k=3, fly_window_size=None, method="eagle3")


class SamplerStub:
    """What MRV2's ``RejectionSampler`` reads of MRV2's ``Sampler``: its sampling states, request states and
    ``apply_sampling_params`` (no logits processors: no request asks for penalties, bias or bad words)."""

    compute_nans = False
    use_fp64_gumbel = False
    logprobs_mode = "raw_logprobs"
    return_sampling_mask = False

    def __init__(self, temperature: torch.Tensor, seeds: torch.Tensor, max_num_reqs: int, sampling_states=None):
        device = temperature.device
        self._states = sampling_states
        self.sampling_states = sampling_states or types.SimpleNamespace(
            temperature=types.SimpleNamespace(gpu=temperature), seeds=types.SimpleNamespace(gpu=seeds),
            max_num_logprobs=lambda idx_mapping_np: -1)
        self.req_states = types.SimpleNamespace(
            prefill_len=types.SimpleNamespace(gpu=torch.ones(max_num_reqs, dtype=torch.int32, device=device)))
        # MRV2's Sampler.apply_sampling_params reads these three.
        self.needs_logits_processing = np.ones(max_num_reqs, dtype=bool)
        self.logits_processors = []
        self.thinking_budget_state = types.SimpleNamespace(apply=lambda logits, ctx: None)

    def apply_sampling_params(self, logits, *args, **kwargs):
        if self._states is None:
            return logits
        from vllm.v1.worker.gpu.sample.sampler import Sampler

        return Sampler.apply_sampling_params(self, logits, *args, **kwargs)


def sampling_states(max_num_reqs: int, vocab: int, temperature: float, top_k: int | None, top_p: float | None,
                    seed: int = 0):
    """MRV2's ``SamplingStates`` (CUDA: its buffers are UVA) with every slot set alike, seeds random."""
    from vllm.v1.worker.gpu.sample.states import SamplingStates

    states = SamplingStates(max_num_reqs, vocab)
    states.temperature.np[:] = temperature
    states.top_k.np[:] = vocab if top_k is None else top_k
    states.top_p.np[:] = 1.0 if top_p is None else top_p
    states.min_p.np[:] = 0.0
    states.seeds.np[:] = np.random.default_rng(seed).integers(-2**62, 2**62, max_num_reqs)
    states.apply_staged_writes()
    return states


def input_batch(draft_sampled, pos, cu: list[int], idx_mapping, expanded_idx_mapping, expanded_local_pos):
    """The fields of MRV2's ``InputBatch`` that the rejection sampler reads, one input token per logits row (the
    row's own token: a request's last sampled token, then its drafts)."""
    device = draft_sampled.device
    num_reqs = len(cu) - 1
    return types.SimpleNamespace(
        req_ids=[f"req-{i}" for i in range(num_reqs)], input_ids=draft_sampled, positions=pos,
        logits_indices=torch.arange(draft_sampled.numel(), device=device),
        expanded_idx_mapping=expanded_idx_mapping, expanded_local_pos=expanded_local_pos,
        cu_num_logits=torch.tensor(cu, dtype=torch.int32, device=device),
        cu_num_logits_np=np.array(cu, dtype=np.int32), num_reqs=num_reqs,
        idx_mapping=idx_mapping, idx_mapping_np=idx_mapping.cpu().numpy(),
        seq_lens_cpu_upper_bound=torch.full((num_reqs,), 1 << 20, dtype=torch.int32),
        seq_lens=torch.full((num_reqs,), 1 << 20, dtype=torch.int32, device=device))
