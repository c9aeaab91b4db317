"""Constants and the output type shared by every EARS backend (reference, CPU path, Triton kernel)."""

from typing import NamedTuple

import torch

# Same value as vLLM's `vllm.v1.sample.rejection_sampler.PLACEHOLDER_TOKEN_ID`.
PLACEHOLDER_TOKEN_ID = -1
# Same value as vLLM's `_SAMPLING_EPS`: a request whose temperature is below it is greedy.
GREEDY_TEMPERATURE_EPS = 1e-5
# +inf logits are clamped to this (so several +inf tokens share the mass equally instead of producing NaN).
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def sample_inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of ``weights`` [n, V] (non-negative, not normalised) by inverse CDF.

    ``uniforms`` [n] in [0, 1). The first index whose cumulative weight exceeds ``u * total`` (float64 sums): a
    zero-weight token can never be chosen, and rounding at the top end is clamped to the last positive weight.
    """
    cdf = weights.to(torch.float64).cumsum(dim=-1)
    idx = torch.searchsorted(cdf, (uniforms.to(torch.float64) * cdf[:, -1])[:, None], right=True).squeeze(1)
    last_positive = weights.shape[-1] - 1 - (weights > 0).flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.minimum(idx, last_positive)


class EarsOutput(NamedTuple):
    """Result of one EARS verification step.

    Attributes
    ----------
    output_token_ids : torch.Tensor
        Shape: ``[batch, max_spec_len + 1]``, int32. Per request: the accepted draft tokens, then either the
        recovered token (at the first rejection) or the bonus token (all drafts accepted), then
        ``PLACEHOLDER_TOKEN_ID`` (-1) padding.
    uncertainty : torch.Tensor
        Shape: ``[num_tokens]``, float32. ``h = 1 - max_v p(v)`` of the target at every draft position
        (0 for greedy requests, whose target distribution is a point mass).
    num_accepted : torch.Tensor
        Shape: ``[batch]``, int32. Draft tokens accepted per request.
    num_tolerance_accepted : torch.Tensor
        Shape: ``[batch]``, int32. Accepted draft tokens that the standard rule would have rejected with the same
        uniform draw (``p/q < u <= p/q + alpha*h``): the tokens accepted only thanks to the EARS tolerance.
    """

    output_token_ids: torch.Tensor
    uncertainty: torch.Tensor
    num_accepted: torch.Tensor
    num_tolerance_accepted: torch.Tensor
