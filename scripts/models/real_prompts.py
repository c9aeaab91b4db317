"""Prompt files for the real pair (SmolLM2-135M-Instruct and its distilled draft): written once, then versioned.

- ``data/prompts_distill.jsonl``: chat prompts whose target continuations train the draft (``distill_draft.py``).
- ``data/prompts_creative.jsonl``: held-out open-ended chat / creative prompts (subjects and wordings never used in
  training): the workload where the target is uncertain and the draft model drafts.
- ``data/prompts_grounded.jsonl``: input-grounded prompts (rewrite, summarise, extract, answer from a passage
  given in the prompt): the workload where ngram drafting finds its drafts in the prompt. Passages are docstrings
  of Python standard-library modules (text that ships with every Python), cut at paragraph boundaries.

Deterministic: fixed lists, a fixed ``random.Random`` seed, the docstrings of this interpreter's stdlib (the files
are committed, so a later Python changes nothing). Each line: ``{"id", "kind", "prompt"}``; the prompt is the user
message (the chat template is applied by whoever sends it).

Usage: ``python -m scripts.models.real_prompts`` (rewrites the three files).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import re
from scripts import harness

ROOT = harness.ROOT

TRAIN_SUBJECTS = [
    "a lighthouse keeper", "a lost dog", "an old clockmaker", "a city at night", "a mountain village", "the ocean",
    "a talking tree", "a space station", "a winter morning", "a busy market", "a young inventor", "a haunted house",
    "a garden in spring", "a train journey", "a small bakery", "a dragon who cannot fly", "a detective", "a storm",
    "an abandoned library", "a friendly robot", "a desert caravan", "a musician", "a river", "a secret door",
    "the first day of school", "a chess match", "a fishing boat", "a forest fire", "a birthday party", "a painter",
    "a volcano", "an island", "a snowman", "a circus", "a pirate ship", "a lonely astronaut", "a cat and a mouse",
    "a bridge", "a letter that arrived late", "a kingdom under the sea", "a farmer", "a thunderstorm",
    "a museum at midnight", "a soccer team", "a moonlit beach", "a mysterious map", "a grandmother's recipe",
    "a journey across the stars", "a quiet village", "a broken umbrella", "a time traveller", "a wise owl",
]
HELD_OUT_SUBJECTS = [
    "a retired sailor", "a glass factory", "a runaway balloon", "a lighthouse on Mars", "a forgotten song",
    "a beekeeper", "an empty stadium", "a paper boat", "a clock that runs backwards", "a street musician",
    "a polar bear in a city", "a shy giant", "a night bus", "a village without colours", "a stolen painting",
    "a mountain rescue", "a kite festival", "a mirror that lies", "an old typewriter", "a fox and a crow",
    "a greenhouse", "a canal boat", "a lost key", "a comet",
]
TRAIN_TEMPLATES = [
    "Write a short story about {s}.", "Write a poem about {s}.", "Describe {s} in vivid detail.",
    "Tell me a bedtime story about {s}.", "Write the opening paragraph of a novel about {s}.",
    "Write a diary entry from the point of view of {s}.", "Imagine {s}. What happens next?",
    "Write a funny story about {s}.", "Write a sad story about {s}.", "Write a dialogue about {s}.",
]
HELD_OUT_TEMPLATES = [
    "Could you write me a little tale about {s}?", "Compose a few verses about {s}.",
    "Paint a picture with words: {s}.", "Invent a legend about {s}.",
]
TRAIN_QUESTIONS = [
    "What are some good habits for staying healthy?", "How do I make a cup of tea?", "Why do leaves change colour?",
    "Give me three tips for learning a new language.", "What is the difference between weather and climate?",
    "How does a rainbow form?", "What should I pack for a weekend trip?", "Explain what a computer does.",
    "How can I be more productive in the morning?", "What are the benefits of reading books?",
    "Suggest a name for a pet goldfish.", "What is photosynthesis?", "How do airplanes fly?",
    "Give me ideas for a rainy afternoon.", "What makes a good friend?", "How do I start a vegetable garden?",
    "Why is exercise important?", "What is the water cycle?", "How do bees make honey?",
    "Describe your ideal holiday.", "What are some fun facts about space?", "How do I write a good email?",
]
HELD_OUT_QUESTIONS = [
    "What would you take to a desert island, and why?", "Describe the perfect sandwich.",
    "If animals could talk, which one would be the rudest?", "What is it like to watch a sunrise?",
    "Give me some advice for my first job interview.", "Why do people like music?",
    "Describe a city you would like to visit.", "What is your favourite season and why?",
]
# Stdlib modules whose docstrings are prose (not just an API list).
DOC_MODULES = [
    "abc", "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "doctest", "email", "enum", "fnmatch", "fractions",
    "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "http", "imaplib",
    "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging", "mailbox", "mimetypes", "numbers",
    "operator", "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "pprint", "queue",
    "quopri", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "sqlite3", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "trace", "traceback", "typing", "unittest", "uuid", "warnings", "wave", "weakref",
    "zipfile", "zlib",
]
GROUNDED_TASKS = [
    "Rewrite the following text, keeping all its details:\n\n{p}",
    "Summarise the following text in a few sentences:\n\n{p}",
    "Read the following text and list the main points it makes:\n\n{p}",
    "Read the following text, then explain in your own words what it describes:\n\n{p}",
]
PASSAGE_CHARS = (300, 900)


def passage(module_name: str) -> str | None:
    """The first paragraphs of a module's docstring, between PASSAGE_CHARS characters (None if too short)."""
    try:
        doc = importlib.import_module(module_name).__doc__ or ""
    except Exception:  # a module that cannot be imported here: skip it
        return None
    paras = [re.sub(r"[ \t]+", " ", p.strip()) for p in re.split(r"\n\s*\n", doc) if p.strip()]
    text = ""
    for p in paras:
        if len(text) + len(p) > PASSAGE_CHARS[1]:
            break
        text = f"{text}\n\n{p}" if text else p
    return text if len(text) >= PASSAGE_CHARS[0] else None


def build() -> dict[str, list[dict]]:
    rng = random.Random(20261125)
    distill = [t.format(s=s) for s in TRAIN_SUBJECTS for t in TRAIN_TEMPLATES] + TRAIN_QUESTIONS * 3
    rng.shuffle(distill)
    creative = [t.format(s=s) for s in HELD_OUT_SUBJECTS for t in HELD_OUT_TEMPLATES[:2]] + HELD_OUT_QUESTIONS
    passages = [(m, passage(m)) for m in DOC_MODULES]
    passages = [(m, p) for m, p in passages if p]
    grounded = [(m, GROUNDED_TASKS[i % len(GROUNDED_TASKS)].format(p=p)) for i, (m, p) in enumerate(passages)]
    held = grounded[:48]
    return {
        "prompts_distill.jsonl": [dict(id=f"distill-{i}", kind="chat", prompt=p) for i, p in enumerate(distill)],
        "prompts_creative.jsonl": [dict(id=f"creative-{i}", kind="creative", prompt=p)
                                   for i, p in enumerate(creative)],
        "prompts_grounded.jsonl": [dict(id=f"grounded-{m}", kind="grounded", prompt=p) for m, p in held],
    }


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # no options; --help works
    for name, rows in build().items():
        path = os.path.join(ROOT, "data", name)
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"wrote {path} ({len(rows)} prompts)")


if __name__ == "__main__":
    main()
