"""Shared pieces of the end-to-end tests: model paths, a `vllm serve` process, /metrics parsing.

Every server runs on 127.0.0.1 on a free port in its own process group and is stopped by pid (the group is
killed). Engines are costly (~40 s each on 2 cores): fixtures are module-scoped and each starts one server.
The bundled pair is models/target and models/draft; EARS_E2E_TARGET / EARS_E2E_DRAFT point elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = os.environ.get("EARS_E2E_TARGET", str(ROOT / "models" / "target"))
DRAFT = os.environ.get("EARS_E2E_DRAFT", str(ROOT / "models" / "draft"))
VENV_BIN = Path(sys.executable).parent
VLLM = str(VENV_BIN / "vllm")
MAX_MODEL_LEN = 512
STARTUP_TIMEOUT_S = 300

requires_models = pytest.mark.skipif(
    not (Path(TARGET, "config.json").exists() and Path(DRAFT, "config.json").exists()),
    reason=f"model pair missing ({TARGET}, {DRAFT}): run `make models`",
)


def engine_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # set by the root conftest.py for the kernel tests; not for vLLM
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env.setdefault("VLLM_LOG_STATS_INTERVAL", "2")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spec(method: str = "draft_model", **kw) -> dict:
    d = {"method": method, "num_speculative_tokens": 3}
    if method == "draft_model":
        d["model"] = DRAFT
    if method == "ngram":
        d.update(prompt_lookup_max=3, prompt_lookup_min=1)
    d.update(kw)
    return d


def serve_command(port: int, speculative_config: dict | None, *extra: str, model: str = TARGET,
                  dtype: str = "float32", max_model_len: int = MAX_MODEL_LEN) -> list[str]:
    cmd = [VLLM, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--dtype", dtype, "--max-model-len", str(max_model_len), "--seed", "0", *extra]
    if speculative_config is not None:
        cmd += ["--speculative-config", json.dumps(speculative_config)]
    return cmd


class Server:
    def __init__(self, name: str, speculative_config: dict | None, *extra: str, log_dir: Path,
                 env: dict[str, str] | None = None, model: str = TARGET, **serve_kw):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(serve_command(self.port, speculative_config, *extra, model=model, **serve_kw),
                                     stdout=self._log, stderr=subprocess.STDOUT, env={**engine_env(), **(env or {})},
                                     start_new_session=True)

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = time.monotonic() - self.started
                        return self
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not ready in {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        self._log.close()

    def metrics(self) -> dict[str, float]:
        """/metrics summed over labels: {name: value} (per-position counters keyed name{position=i})."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith("vllm:"):
                continue
            m = re.match(r"([^{\s]+)(\{[^}]*\})?\s+(\S+)$", line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            pos = re.search(r'position="(\d+)"', labels)
            key = f"{name}{{position={pos.group(1)}}}" if pos else name
            out[key] = out.get(key, 0.0) + value
        return out


def start_servers(tmp_path_factory, specs: dict[str, tuple]) -> dict[str, Server]:
    """Start several servers at once (their start-ups overlap), wait for all; stop all if one fails."""
    log_dir = tmp_path_factory.mktemp("servers")
    servers = {name: Server(name, *args, log_dir=log_dir) for name, args in specs.items()}
    try:
        for s in servers.values():
            s.wait_ready()
    except Exception:
        for s in servers.values():
            s.stop()
        raise
    return servers


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def acceptance(after: dict, before: dict) -> float:
    drafted = delta(after, before, "vllm:spec_decode_num_draft_tokens_total")
    return delta(after, before, "vllm:spec_decode_num_accepted_tokens_total") / max(drafted, 1.0)


# ---- in-process pieces (vLLM imported, no engine) ------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm_base_proposer():
    """``vllm.v1.spec_decode.llm_base_proposer`` with the plugin registered (its patches apply on import)."""
    pytest.importorskip("vllm")
    from ears_vllm.vllm_plugin import register

    register()
    import vllm.v1.spec_decode.llm_base_proposer as module

    return module


def sampling_metadata(temps: list[float], seeds: dict[int, int] | None = None):
    """vLLM's ``SamplingMetadata`` for rows at ``temps`` (0: greedy), no penalties or logits processors; ``seeds``
    maps a row to the seed of its ``torch.Generator``."""
    import torch
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata

    b = len(temps)
    return SamplingMetadata(
        temperature=torch.tensor(temps, dtype=torch.float32), all_greedy=all(t == 0 for t in temps),
        all_random=all(t > 0 for t in temps), top_p=None, top_k=None,
        generators={i: torch.Generator().manual_seed(s) for i, s in (seeds or {}).items()},
        max_num_logprobs=None, no_penalties=True, prompt_token_ids=None, frequency_penalties=torch.zeros(b),
        presence_penalties=torch.zeros(b), repetition_penalties=torch.ones(b), output_token_ids=[[] for _ in range(b)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors(), spec_token_ids=None)
