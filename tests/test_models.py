"""The bundled models load with transformers, share a tokenizer and generate."""

import json
import os
import pathlib

import pytest

from scripts.harness import task

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok():
    t = transformers.AutoTokenizer.from_pretrained(MODELS / "target")
    t.padding_side = "left"
    return t


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {n: transformers.LlamaForCausalLM.from_pretrained(MODELS / n, dtype="float32").eval()
            for n in ("target", "draft")}


@pytest.mark.parametrize("name", ["target", "draft"])
def test_files_present(name):
    d = MODELS / name
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json"):
        assert (d / f).is_file(), f
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg.get("torch_dtype", cfg.get("dtype")) == "float32"
    assert cfg["head_dim"] in (32, 64)  # vLLM CPU attention supports these
    assert cfg["max_position_embeddings"] >= 512


def test_same_tokenizer():
    a = (MODELS / "target" / "tokenizer.json").read_text()
    b = (MODELS / "draft" / "tokenizer.json").read_text()
    assert a == b


def test_sizes(models):
    n_t = sum(p.numel() for p in models["target"].parameters())
    n_d = sum(p.numel() for p in models["draft"].parameters())
    assert n_t <= 4_500_000 and n_d <= 1_000_000 and n_d * 3 < n_t


def test_tokenizer_round_trip_and_specials(tok):
    text = "Question: Mia has 23 pens. How many?\nAnswer: 23 + 15 = 38\n#### 38"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.eos_token == "</s>" and tok.pad_token == "<pad>" and tok.bos_token == "<s>"
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    # digits are single tokens
    assert all(len(tok(str(d), add_special_tokens=False)["input_ids"]) == 1 for d in range(10))


def test_chat_template(tok):
    s = tok.apply_chat_template([{"role": "user", "content": "Mia has 2 pens. How many?"}],
                                tokenize=False, add_generation_prompt=True)
    assert s == "<s>" + task.format_prompt("Mia has 2 pens. How many?")


def _greedy(model, tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=100, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_generate_greedy_solves_and_stops(tok, models):
    rows = task.load_jsonl(ROOT / "data" / "gsm_synth_test.jsonl")[:40]
    prompts = [task.format_prompt(r["question"]) for r in rows]
    texts = _greedy(models["target"], tok, prompts)
    assert all("####" in t for t in texts), texts
    # generation stops at eos right after the answer line
    assert all(t.rstrip().splitlines()[-1].startswith("####") for t in texts), texts
    n_target = sum(task.score(t, r["answer"]) for t, r in zip(texts, rows))
    n_draft = sum(task.score(t, r["answer"])
                  for t, r in zip(_greedy(models["draft"], tok, prompts), rows))
    # on the full 250-problem split: target 31.6%, draft 2.4% at T=0 (results/model_pair.json)
    assert n_target >= 4 and n_target > n_draft, (n_target, n_draft)


def test_draft_generates(tok, models):
    enc = tok([task.format_prompt("Tom has 5 cards. He buys 3 more. How many cards does Tom "
                                  "have now?")], return_tensors="pt")
    out = models["draft"].generate(**enc, max_new_tokens=60, do_sample=True, top_k=0,
                                   temperature=1.0, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > enc["input_ids"].shape[1]


@pytest.mark.vllm
def test_vllm_loads_pair():
    """Start a real vLLM CPU engine on the target (slow; marker `vllm`)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(MODELS / "target"), enforce_eager=True, max_model_len=512,
              dtype="float32")
    rows = task.load_jsonl(ROOT / "data" / "gsm_synth_test.jsonl")[:4]
    outs = llm.generate([task.format_prompt(r["question"]) for r in rows],
                        SamplingParams(temperature=0, max_tokens=100))
    texts = [o.outputs[0].text for o in outs]
    assert all("####" in t for t in texts), texts


def test_distill_defaults_are_the_committed_heads():
    """`make draft-retrain` runs scripts.models.distill_draft with its defaults: they must be the settings recorded with
    the committed EAGLE-3 head, or a retrain makes a different head than the one documented and measured."""
    from scripts.models import distill_draft

    info = json.loads((MODELS / "smollm2-eagle3" / "training_info.json").read_text())
    args = distill_draft.parser().parse_args([])
    recorded = dict(epochs=info["epochs"], batch=info["batch"], lr=info["lr"], ttt_steps=info["ttt_steps"],
                    seed=info["seed"], threads=info["threads"], train_dtype=info["train_dtype"],
                    draft_vocab=info["draft_vocab"], samples=info["data"]["samples_per_prompt"],
                    gen_temperature=info["data"]["temperature"], gen_tokens=info["data"]["max_tokens"])
    assert {k: getattr(args, k) for k in recorded} == recorded
    assert info["data"]["features_and_labels"].endswith(args.feature_dtype)
    assert info["data"]["generator"].endswith(distill_draft.GEN_DTYPE)


def test_distill_caps_onednn_caches_before_any_stage(monkeypatch):
    """Uncapped, oneDNN's and ideep's kernel caches (one entry per matmul shape) grew the train stage by
    ~18 MB/s to a 20.7 GB pipeline peak (docs/models.md). main() must cap them before a stage builds a kernel, and
    leave a value the user set alone."""
    from scripts.models import distill_draft

    seen = []
    monkeypatch.setattr(distill_draft, "train", lambda args: seen.append(
        {k: os.environ.get(k) for k in distill_draft.ONEDNN_CACHES}))
    for name in distill_draft.ONEDNN_CACHES:  # absent, and restored as they were after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    distill_draft.main(["--stage", "train"])
    assert seen[-1] == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "LRU_CACHE_CAPACITY": "16"}
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "64")
    distill_draft.main(["--stage", "train"])
    assert seen[-1]["LRU_CACHE_CAPACITY"] == "64"


@pytest.fixture(scope="module")
def eager_target():
    return transformers.LlamaForCausalLM.from_pretrained(MODELS / "target", dtype="float32",
                                                         attn_implementation="eager").eval()


def _left_padded(tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_distill_sampler_greedy_limit_matches_unpadded_generate(tok, eager_target):
    """distill_draft.sample_answers (the draft's training text) on a left-padded batch: at temperature 1e-4 it is
    the argmax, so each row must be transformers' greedy answer to that prompt alone (no padding), token for token
    up to and including eos, then padding: this checks its KV cache, positions and padding mask."""
    from scripts.models.distill_draft import sample_answers

    rows = task.load_jsonl(ROOT / "data" / "gsm_synth_test.jsonl")[:6]
    prompts = [task.format_prompt(r["question"]) for r in rows]
    ids, mask = _left_padded(tok, prompts)
    assert len(set(mask.sum(-1).tolist())) > 1  # prompts of different lengths: padding is exercised
    torch.manual_seed(0)
    with torch.no_grad():
        out = sample_answers(eager_target, ids, mask, 60, 1e-4, tok.eos_token_id, tok.pad_token_id)
    ended = 0
    for r, prompt in enumerate(prompts):
        enc = tok([prompt], return_tensors="pt")
        with torch.no_grad():
            ref = eager_target.generate(**enc, max_new_tokens=60, do_sample=False, pad_token_id=tok.pad_token_id)
        ref = ref[0, enc["input_ids"].shape[1]:].tolist()
        got = out[r].tolist()
        assert got[: len(ref)] == ref, (r, tok.decode(got), tok.decode(ref))
        if tok.eos_token_id in ref:
            ended += 1
            assert all(t == tok.pad_token_id for t in got[len(ref):])
    assert ended >= 4  # the bundled target ends its answers with eos within 60 tokens


def test_distill_sampler_draws_from_the_tempered_distribution(tok, eager_target):
    """20000 first tokens of one prompt at T = 0.8: every token's frequency within 4.5 sigma of
    softmax(logits / 0.8) (sigma = sqrt(p (1 - p) / n); an exact sampler fails one of the 860 tokens with probability
    < 860 x 6.8e-6 = 0.6%, and the seed is fixed). Dropping the temperature moves the likeliest token by far more."""
    from scripts.models.distill_draft import sample_answers

    n = 20000
    ids, mask = _left_padded(tok, ["Question: Tom has 5 cards. He buys 3 more. How many cards?\nAnswer:"])
    with torch.no_grad():
        p = torch.softmax(eager_target(input_ids=ids, attention_mask=mask).logits[0, -1].double() / 0.8, -1)
        torch.manual_seed(3)
        out = sample_answers(eager_target, ids.expand(n, -1), mask.expand(n, -1), 1, 0.8, tok.eos_token_id,
                             tok.pad_token_id)
    assert out.shape == (n, 1)
    freq = torch.bincount(out[:, 0], minlength=p.numel()).double() / n
    sigma = (p * (1 - p) / n).sqrt()
    assert bool(((freq - p).abs() <= 4.5 * sigma + 1e-12).all()), float(((freq - p).abs() / sigma).max())
    assert float(p.max()) < 0.9  # a distribution with room for the draw to be wrong
