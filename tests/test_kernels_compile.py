"""The Triton kernels compile for an H100 / H200 (sm_90) on this machine, without a GPU (``compile_kernels.py``).

The interpreted kernel tests cannot catch a kernel that the compiler refuses (a global that is not a
``tl.constexpr``, a loop-carried variable whose type changes): this test does, in a process without
TRITON_INTERPRET. It compiles to a cubin with the ptxas that ships with Triton; it does not run anything.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_compile_for_sm90():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "compile_kernels.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("ok", "FAIL"))]
    assert proc.returncode == 0 and lines and all(x.startswith("ok") for x in lines), \
        proc.stdout[-4000:] + proc.stderr[-2000:]
    assert any("top_k_top_p" in x for x in lines) and any("verify" in x for x in lines)
