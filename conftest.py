import os

import torch

# Without a GPU the Triton kernels run under Triton's interpreter. Triton reads the switch when it is first imported
# and when a kernel is decorated, so it is set here, in the repository's root conftest, before pytest imports
# anything it collects (the doctests of ears_vllm import vLLM, which imports Triton), and the kernel module is
# imported right after; vLLM's own processes started by the e2e tests get an environment without it
# (tests/e2e/conftest.py).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
try:
    import ears_vllm.kernels.ears_verify  # noqa: F401
except ImportError:  # triton not installed: the triton-parametrised tests fail with a clear ImportError
    pass


def pytest_configure(config):
    # The interpreter evaluates kernels with numpy, which warns on the (intended) -inf arithmetic.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")
