"""Triton kernels of ears_vllm (installed as the subpackage ``ears_vllm.kernels``)."""
