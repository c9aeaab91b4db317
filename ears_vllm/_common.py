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

    ``uniforms`` [n] in [0, 1). The first index whose cumulative weight (float64) exceeds ``u * total``: a
    zero-weight token can never be chosen; if rounding puts ``u * total`` at the total, the last positive weight is
    taken. Rows of total weight 0 return 0: callers handle them.
    """
    cdf = weights.to(torch.float64).cumsum(dim=-1)
    total = cdf[:, -1:].contiguous()
    idx = torch.searchsorted(cdf, uniforms.to(torch.float64)[:, None] * total, right=True)
    last_positive = torch.searchsorted(cdf, total, right=False)
    return torch.minimum(idx, last_positive).squeeze(1)


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
