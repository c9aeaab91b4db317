from setuptools import setup

# `kernels/` ships as the subpackage `ears_vllm.kernels`: a PyPI package named `kernels` exists, so a top-level
# `import kernels` could pick up the wrong one.
setup(
    name="ears-vllm",
    version="0.1.0",
    description="EARS (uncertainty-adaptive rejection sampling) for vLLM speculative decoding",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["ears_vllm", "ears_vllm.kernels", "ears_vllm.vllm_plugin", "ears_vllm.vllm_plugin.patches"],
    package_dir={"ears_vllm": "ears_vllm", "ears_vllm.kernels": "kernels"},
    install_requires=["torch", "numpy"],
    extras_require={"triton": ["triton"], "test": ["pytest"]},
    entry_points={"vllm.general_plugins": ["ears = ears_vllm.vllm_plugin:register"]},
)
