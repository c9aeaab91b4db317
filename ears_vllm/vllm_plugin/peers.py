"""Other lossy verification rules, as evaluation arms beside EARS (experimental; V1 runner; CPU-tested).

Both are written as what they change in the standard rule's inputs, so that the same verification (EARS's, at
alpha 0) runs after them; neither is exact about its quality cost the way EARS is, and neither is a product feature.

- **FLy** ("Training-Free Loosely Speculative Decoding", arXiv 2511.22972), as vLLM 0.33 defines it for its V1
  runner (``vllm/v1/spec_decode/fly.py``): a rejected draft whose target top-k entropy is at least a threshold is
  accepted anyway when the next W drafts would be accepted natively (with their own uniforms). vLLM encodes that
  before the standard kernels run, by setting the deferred position's uniform to 0 (random requests) or its target
  argmax to the draft (greedy requests); ``fly_deferrals`` computes the same positions.
- **Typical acceptance** (Medusa, arXiv 2401.10774, in the form of vllm-ascend's "Entropy Verify"): accept iff
  ``p(x)/q(x) >= tau * u`` with ``tau = min(exp(-posterior_alpha * H(p)), posterior_threshold)``, ``H`` the
  entropy of the target distribution (``-sum p log(p + 1e-10)``): the uniform is scaled by ``tau``. Its exact
  per-position TV cost is ``min(1, r / tau) - min(1, r)``, ``r = p(x)/q(x)``, as for EARS.
"""

from __future__ import annotations

import torch

# vllm-ascend's constant inside the entropy's logarithm.
TYPICAL_EPSILON = 1e-10


def fly_entropy(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """FLy's uncertainty of each row of target probabilities ``[n, V]``: ``-sum p log p`` over the row's top-k
    probabilities (not renormalised), as vLLM 0.33's ``compute_fly_entropy``."""
    top = torch.topk(probs.to(torch.float32), k=min(top_k, probs.shape[-1]), dim=-1).values
    return -torch.where(top > 0, top * top.log(), torch.zeros_like(top)).sum(dim=-1)


def fly_deferrals(accepted: torch.Tensor, deferrable: torch.Tensor, entropy: torch.Tensor, num_draft: torch.Tensor,
                  window: int, threshold: float) -> torch.Tensor:
    """Where FLy accepts a draft the standard rule rejects. All ``[batch, K]``: ``accepted`` (the standard rule's
    verdict with the position's own uniform, each position on its own), ``deferrable`` (a real draft that the
    target and the draft both give positive probability), ``entropy`` (``fly_entropy`` of the position's target
    row); ``num_draft`` ``[batch]``. Position j is deferred iff it is rejected, deferrable, ``j + window <
    num_draft``, its entropy is >= ``threshold``, and positions j+1..j+window are all accepted."""
    batch, k = accepted.shape
    positions = torch.arange(k, device=accepted.device)
    ahead = torch.ones_like(accepted)
    padded = torch.cat([accepted, torch.zeros(batch, window, dtype=torch.bool, device=accepted.device)], 1)
    for offset in range(1, window + 1):
        ahead &= padded[:, offset:offset + k]
    return (~accepted & deferrable & (entropy >= threshold) & ahead
            & (positions[None, :] + window < num_draft[:, None]))


def typical_scale(probs: torch.Tensor, posterior_alpha: float, posterior_threshold: float) -> torch.Tensor:
    """``tau`` of each row of target probabilities ``[n, V]``: ``min(exp(-posterior_alpha * H), threshold)``."""
    p = probs.to(torch.float32)
    entropy = -(p * torch.log(p + TYPICAL_EPSILON)).sum(dim=-1)
    return torch.clamp(torch.exp(-posterior_alpha * entropy), max=posterior_threshold)
