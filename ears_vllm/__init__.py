"""ears_vllm: EARS (uncertainty-adaptive rejection sampling) for speculative decoding, and its vLLM plugin.

The library layer (``ears_rejection_sample`` and the reference) needs only torch; the Triton kernel needs triton
and a CUDA device; the vLLM integration lives in ``ears_vllm.vllm_plugin`` and is loaded by vLLM itself.
"""

from ._common import GREEDY_TEMPERATURE_EPS, PLACEHOLDER_TOKEN_ID, EarsInputs, EarsOutput, check_alpha
from .ops import ears_rejection_sample
from .reference import ears_rejection_sample_reference

__all__ = [
    "EarsInputs",
    "EarsOutput",
    "GREEDY_TEMPERATURE_EPS",
    "PLACEHOLDER_TOKEN_ID",
    "check_alpha",
    "ears_rejection_sample",
    "ears_rejection_sample_reference",
]
__version__ = "0.1.0"
