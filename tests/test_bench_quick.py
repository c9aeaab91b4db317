"""The benchmark scripts' quick paths run (``python -m scripts.bench.<name>``) and write well-formed CSV in the
results schema (``scripts/harness/results.py``)."""

import math
import os
import subprocess
import sys
import textwrap

import pytest

from scripts.harness import results, task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KERNEL_COLUMNS = {"timestamp", "device", "threads", "torch", "provider", "batch", "k", "vocab", "dtype",
                  "draft_probs", "ms_p50", "ms_p20", "ms_p80", "bytes", "gbps", "peak_gbps", "ratio_to_stock"}


def _env(**extra):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # set by conftest for in-process kernels; the scripts decide themselves
    env.update(extra)
    return env


def _run(args, timeout=300, **env):
    """``python -m scripts.bench.<args[0]> args[1:]`` from the repository root (or ``python -c`` when args[0] is -c)."""
    cmd = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", f"scripts.bench.{args[0]}", *args[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _rows(path):
    """The records of one run (the file's only one), as wide dicts."""
    recs = results.read(path)
    assert len({r["run"] for r in recs}) == 1 and set(recs[0]) >= set(results.FIXED)
    return recs


def _vllm_importable():
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def test_bench_kernel_quick_csv(tmp_path):
    out = tmp_path / "k.csv"
    _run(["bench_kernel", "--quick", "--shapes", "tiny", "--rep-ms", "5",
          "--no-progress", "--out", str(out)])
    rows = _rows(out)
    assert rows and KERNEL_COLUMNS <= set(rows[0])
    expected = {"ears_torch", "reference"} | ({"stock", "ears_unfused"} if _vllm_importable() else set())
    assert {r["provider"] for r in rows} == expected
    for r in rows:
        for col in ("ms_p50", "ms_p20", "ms_p80", "bytes", "gbps", "peak_gbps"):
            assert float(r[col]) > 0 and math.isfinite(float(r[col])), (col, r)
        assert float(r["ms_p20"]) <= float(r["ms_p50"]) <= float(r["ms_p80"])
        assert r["device"] and r["timestamp"] and int(r["threads"]) == 1
    # every provider is measured at every shape, and stock's own ratio is exactly 1
    shapes = {(r["batch"], r["k"], r["vocab"], r["dtype"], r["draft_probs"]) for r in rows}
    assert len(rows) == len(shapes) * len(expected)
    assert all(float(r["ratio_to_stock"]) == 1.0 for r in rows if r["provider"] == "stock")
    for suffix in ("time", "ratio", "gbps"):
        assert (tmp_path / f"k_{suffix}.png").stat().st_size > 1000


@pytest.mark.vllm
def test_bench_step_quick_csv(tmp_path):
    """bench_step times both samplers' forward, each in its own process, and reports which EARS path ran."""
    out = tmp_path / "step.csv"
    proc = _run(["bench_step", "--quick", "--rounds", "1", "--no-progress",
                 "--out", str(out)], timeout=600)
    rows = _rows(out)
    assert {(r["provider"], r["case"]) for r in rows} == {(p, c) for p in ("ears", "stock")
                                                          for c in ("temperature", "topk_topp")}
    for r in rows:
        assert float(r["ms_p20"]) <= float(r["ms_p50"]) <= float(r["ms_p80"]) and float(r["ms_p50"]) > 0
        assert int(r["threads"]) == 1 and r["device"] and r["vllm"]
        assert r["ears_path"] == ("fused" if r["provider"] == "ears" else "")
    assert "EARS/stock" in proc.stdout


@pytest.mark.vllm
def test_stock_provider_matches_ears_alpha0():
    """bench_kernel's ``stock`` provider (the installed vLLM's ``apply_sampling_constraints`` + ``rejection_sample``,
    with the plugin's CPU expand fix) emits token for token what EARS emits at alpha 0 given the same uniforms and
    recovery noise: the benchmark compares like with like. Fails without the expand fix, or at alpha > 0."""
    pytest.importorskip("vllm")
    code = textwrap.dedent("""
        import dataclasses
        import torch
        from ears_vllm import ears_rejection_sample
        from scripts.bench import bench_kernel
        rs, SamplingMetadata, desc = bench_kernel.load_stock("cpu", "installed", ".stock")
        assert rs is not None, desc
        bench_kernel.fix_cpu_expand()  # without it the stock CPU path divides by uninitialised temperatures
        B, K, V = 3, 3, 40
        N = B * K
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(N, V, generator=g) * 2
        draft = torch.where(torch.rand(N, generator=g) < 0.7, logits.argmax(-1),
                            torch.randint(0, V, (N,), generator=g)).to(torch.int32)
        cu = (torch.arange(1, B + 1) * K).to(torch.int32)
        bonus = torch.randint(0, V, (B, 1), generator=g)
        temp = torch.tensor([0.7, 1.0, 0.9])
        fields = {f.name for f in dataclasses.fields(SamplingMetadata)}
        empty = torch.empty(0)
        md = SamplingMetadata(**{k: v for k, v in dict(
            temperature=temp, all_greedy=False, all_random=True, top_p=None, top_k=None, generators={},
            max_num_logprobs=None, no_penalties=True, prompt_token_ids=None, frequency_penalties=empty,
            presence_penalties=empty, repetition_penalties=empty, output_token_ids=[], allowed_token_ids_mask=None,
            bad_words_token_ids={}, logitsprocs=None).items() if k in fields})
        checked = 0
        for dp in (None, torch.softmax(torch.randn(N, V, generator=g), -1)):
            for seed in range(8):
                torch.manual_seed(seed)
                x = rs.apply_sampling_constraints(logits.clone(), cu, md)
                stock = rs.rejection_sample(draft, [K] * B, K, cu, dp, x, bonus, md)
                torch.manual_seed(seed)  # vLLM's draw order: uniforms, then the [B, V] Exp(1) noise
                u = torch.rand(N, dtype=torch.float64)
                noise = torch.empty(B, V).exponential_()
                ears = ears_rejection_sample(draft, cu, logits, bonus, temp, 0.0, K, draft_probs=dp,
                                             uniform_probs=u, recovery_noise=noise, backend="torch")
                assert torch.equal(stock, ears.output_token_ids), (seed, stock, ears.output_token_ids)
                checked += int((stock[:, :-1] != -1).sum())
        assert checked > 0  # some drafts were accepted, so the comparison is not vacuous
        print("ok", desc, checked)
    """)
    proc = _run(["-c", code])
    assert proc.stdout.strip().startswith("ok"), proc.stdout


TARGET = os.environ.get("EARS_E2E_TARGET", os.path.join(ROOT, "models", "target"))
DRAFT = os.environ.get("EARS_E2E_DRAFT", os.path.join(ROOT, "models", "draft"))
TEST_DATA = os.path.join(ROOT, "data", "gsm_synth_test.jsonl")


@pytest.mark.vllm
@pytest.mark.skipif(not (os.path.exists(os.path.join(TARGET, "config.json"))
                         and os.path.exists(os.path.join(DRAFT, "config.json"))),
                    reason=f"model pair missing ({TARGET}, {DRAFT}): run `make models`")
def test_bench_e2e_quick_one_engine(tmp_path):
    """bench_e2e --quick restricted to the EARS engine (one engine start; alphas per request)."""
    out = tmp_path / "e2e.csv"
    _run(["bench_e2e", "--quick", "--samplers", "ears", "--alphas", "0,0.3", "--n", "4",
          "--max-tokens", "32", "--target", TARGET, "--draft", DRAFT, "--data", TEST_DATA,
          "--out", str(out)], timeout=900)
    rows = _rows(out)
    assert [(r["sampler"], float(r["alpha"])) for r in rows] == [("ears", 0.0), ("ears", 0.3)]
    for r in rows:
        assert float(r["tokens_per_s"]) > 0 and int(r["output_tokens"]) > 0
        assert float(r["mean_accept_len"]) >= 1.0 and int(r["num_drafts"]) > 0
        assert 0.0 <= float(r["accept_pos1"]) <= 1.0 and 0.0 <= float(r["accuracy"]) <= 1.0
    assert (tmp_path / "e2e.png").stat().st_size > 1000


def test_eval_accuracy_quick_server_mode(tmp_path):
    """eval_accuracy --quick against a stand-in OpenAI-compatible server (no engine): table and CSV."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    data = TEST_DATA
    answers = {task.format_prompt(r["question"]): r["answer"] for r in task.load_jsonl(data)}
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, obj):
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send({"object": "list", "data": [{"id": "stand-in", "object": "model", "created": 0,
                                                    "owned_by": "test"}]})

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            alpha = (req.get("vllm_xargs") or {}).get("ears_alpha")
            seen.append(alpha)
            # right at alpha 0, wrong on every other problem at alpha 0.3: a known accuracy change
            text = " " + answers[req["prompt"]]
            if alpha and req["seed"] % 2:
                text = " #### -1"
            self._send({"id": "x", "object": "text_completion", "created": 0, "model": "stand-in",
                        "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 10, "total_tokens": 15}})

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "eval.csv"
        proc = _run(["eval_accuracy", "--quick", "--n", "8", "--data", data,
                     "--server", f"http://127.0.0.1:{srv.server_address[1]}", "--out", str(out)], timeout=120)
    finally:
        srv.shutdown()
    rows = _rows(out)
    assert {(r["sampler"], r["alpha"]) for r in rows} >= {("ears", "0"), ("ears", "0.3")}
    by_alpha = {r["alpha"]: r for r in rows if r["sampler"] == "ears"}
    assert float(by_alpha["0"]["accuracy"]) == 1.0
    assert float(by_alpha["0.3"]["accuracy"]) == 0.5
    assert float(by_alpha["0.3"]["delta_pts"]) == -50.0
    assert float(by_alpha["0.3"]["delta_lo"]) < -50.0 < float(by_alpha["0.3"]["delta_hi"])
    assert "acc. change pts" in proc.stdout and set(seen) == {0.0, 0.3}


@pytest.mark.vllm
def test_bench_draft_sampling_quick_csv(tmp_path):
    """bench_draft_sampling times vLLM's draft sampling, the plugin's and its seeded path on the same logits, one
    thread."""
    out = tmp_path / "ds.csv"
    _run(["bench_draft_sampling", "--quick", "--out", str(out)])
    rows = _rows(out)
    assert {r["provider"] for r in rows} == {"vllm", "ears_plugin", "ears_plugin_seeded"}
    for r in rows:
        assert 0 < float(r["ms_min"]) <= float(r["ms_p50"]) <= float(r["ms_max"])
        assert int(r["threads"]) == 1 and r["device"] and r["vllm"]
    assert [float(r["ratio_to_vllm"]) for r in rows if r["provider"] == "vllm"] == [1.0]


def test_check_seeded_batch_compares_each_prompt_and_arm(monkeypatch, capsys):
    """check_seeded_batch runs one engine at c=1 and one at c=N and reports, per arm, which prompts differ and
    where (engines replaced by canned outputs: the real pair's engines are what the script itself runs)."""
    from scripts.bench import check_seeded_batch as cs

    jobs = []

    def fake_job(job):
        jobs.append(job)
        conc = job["engine_kwargs"]["max_num_seqs"]
        out = {0.1: [[1, 2, 3], [4, 5, 6]], 0.3: [[7, 8], [9]]}
        if conc == 16:
            out[0.3] = [[7, 8], [9, 10]]  # prompt 1 at alpha 0.3 grows a token: differs from position 1
        return {"results": [dict(alpha=r["alpha"], output_ids=out[r["alpha"]]) for r in job["runs"]]}

    monkeypatch.setattr(cs.engine, "run_engine_job", fake_job)
    monkeypatch.setattr(cs.bt, "load_prompts", lambda path, n: ["a", "b"][:n])
    assert cs.main(["--workload", "grounded", "--n", "2", "--alphas", "0.1,0.3"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["grounded ears alpha=0.1: c=1 vs c=16: 0 of 2 prompts differ",
                     "grounded ears alpha=0.3: c=1 vs c=16: 1 of 2 prompts differ (prompt, first differing position): "
                     "[(1, 1)]"]
    assert [j["engine_kwargs"]["max_num_seqs"] for j in jobs] == [1, 16]
    assert all(r["seed"] == 0 and r["temperature"] == 0.7 for j in jobs for r in j["runs"])
    spec = jobs[0]["speculative_config"]
    assert spec["method"] == "ngram" and spec["num_speculative_tokens"] == 4 and spec["rejection_sampler"] == "ears"
    assert cs.first_difference([1, 2, 3], [1, 2]) == 2 and cs.first_difference([1, 5], [1, 6]) == 1


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "models", "smollm2-135m-instruct", "model.safetensors")),
                    reason="the real pair's target is built by `make models`")
def test_top_k_top_p_quick_csv(tmp_path):
    """The EARS kernel's top-k / top-p sets on the real pair's rows and a synthetic row (interpreter): every row
    equals the definition, and it read each row at least twice and at most 1 + 2 * (9 + 2) times (the first pass,
    then per selection up to 9 levels of 16 bins over 32-bit keys and a gather, or a 2-pass tie count)."""
    out = tmp_path / "t.csv"
    _run(["top_k_top_p", "--quick", "--out", str(out)], timeout=400)
    rows = _rows(out)
    assert {(r["rows_from"], r["dtype"]) for r in rows} == {("real_pair", "float32"), ("real_pair", "bfloat16"),
                                                           ("synthetic", "bfloat16")}
    assert {r["config"] for r in rows} == {"k50", "p0.9", "p0.95", "k50_p0.9"}
    for r in rows:
        assert int(r["ears_equal_rows"]) == int(r["rows"]) > 0, r
        assert 2 <= float(r["passes_p50"]) <= int(r["passes_max"]) <= 23, r
