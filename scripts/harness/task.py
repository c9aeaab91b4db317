"""Synthetic GSM8K-format arithmetic task: generator, prompt format, scorer (benchmark harness, not shipped).

Stdlib only.  Problems look like GSM8K records::

    {"question": "Mia has 23 pens. She buys 15 more. How many pens does Mia have now?",
     "answer": "Mia starts with 23 pens.\\nAfter buying, she has 23 + 15 = 38 pens.\\n#### 38"}

The bundled models (``models/target``, ``models/draft``) are trained on
``format_prompt(question) + " " + answer`` followed by the eos token, so
generation stops after the ``#### N`` line.
"""

from __future__ import annotations

import json
import random
import re
from typing import Iterable, Iterator

__all__ = [
    "ANSWER_PREFIX",
    "extract_answer",
    "normalize_number",
    "score",
    "load_jsonl",
    "write_jsonl",
    "format_prompt",
    "format_example",
    "make_problem",
    "generate_problems",
    "make_story",
    "accuracy",
]

ANSWER_PREFIX = "Answer:"

# ---------------------------------------------------------------------------
# Prompt format and scorer
# ---------------------------------------------------------------------------


def format_prompt(question: str) -> str:
    """The prompt the models were trained on (no trailing space)."""
    return f"Question: {question.strip()}\n{ANSWER_PREFIX}"


def format_example(question: str, answer: str) -> str:
    """Full training text for one problem (without bos/eos)."""
    return f"{format_prompt(question)} {answer.strip()}"


_NUM_RE = re.compile(r"-?\s*[\d,]*\.?\d+")


def normalize_number(s: str) -> str | None:
    """Normalise a number string: strip, drop commas/$, int-like floats -> int."""
    s = s.strip().replace(",", "").replace("$", "").replace(" ", "")
    s = s.rstrip(".")
    if not s:
        return None
    try:
        if re.fullmatch(r"-?\d+", s):
            return str(int(s))
        v = float(s)
    except ValueError:
        return None
    if v != v or v in (float("inf"), float("-inf")):
        return None
    if v == int(v):
        return str(int(v))
    return repr(v)


def extract_answer(text: str | None) -> str | None:
    """Number after the last ``####`` in ``text``, normalised; None if absent."""
    if not text or "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1]
    tail = tail.strip().split("\n", 1)[0] if tail.strip() else ""
    m = _NUM_RE.search(tail)
    if not m:
        return None
    return normalize_number(m.group(0))


def score(pred_text: str | None, gold_answer_text: str) -> bool:
    """Exact match of the ``####`` numbers of prediction and gold answer.

    ``gold_answer_text`` may be a full GSM8K answer or just the number.
    """
    pred = extract_answer(pred_text)
    if pred is None:
        return False
    gold = extract_answer(gold_answer_text)
    if gold is None:
        gold = normalize_number(str(gold_answer_text))
    return gold is not None and pred == gold


def accuracy(preds: Iterable[str], golds: Iterable[str]) -> float:
    preds, golds = list(preds), list(golds)
    if len(preds) != len(golds):
        raise ValueError("preds and golds differ in length")
    if not preds:
        return 0.0
    return sum(score(p, g) for p, g in zip(preds, golds)) / len(preds)


def load_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------
# Problem generator
# ---------------------------------------------------------------------------

NAMES = [
    ("Mia", "she"), ("Tom", "he"), ("Ava", "she"), ("Leo", "he"), ("Zoe", "she"),
    ("Sam", "he"), ("Ivy", "she"), ("Ben", "he"), ("Lily", "she"), ("Max", "he"),
    ("Emma", "she"), ("Noah", "he"), ("Ruby", "she"), ("Jack", "he"), ("Nora", "she"),
    ("Owen", "he"), ("Ella", "she"), ("Liam", "he"), ("Rosa", "she"), ("Omar", "he"),
]
ITEMS = [
    "apples", "pens", "books", "stamps", "cards", "marbles", "coins", "shells",
    "stickers", "cookies", "pencils", "eggs", "flowers", "toys", "rocks", "beads",
]
FRIENDS = ["a friend", "his sister", "her brother", "a neighbor", "the teacher", "a classmate"]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _step_add(rng, x, name, pro, item):
    b = rng.randint(1, 30)
    verb = rng.choice(["buys", "finds", "gets", "receives", "collects"])
    q = rng.choice([
        f"{_cap(pro)} {verb} {b} more.",
        f"Then {pro} {verb} {b} more {item}.",
        f"Later {name} {verb} another {b}.",
    ])
    r = x + b
    a = rng.choice([
        f"After that, {pro} has {x} + {b} = {r} {item}.",
        f"{x} + {b} = {r}, so {pro} now has {r}.",
        f"Adding {b} gives {x} + {b} = {r}.",
    ])
    return q, a, r


def _step_sub(rng, x, name, pro, item):
    if x < 3:
        return None
    b = rng.randint(1, min(x - 1, 30))
    verb = rng.choice(["gives away", "loses", "sells", "uses"])
    q = rng.choice([
        f"{_cap(pro)} {verb} {b} of them.",
        f"Then {pro} {verb} {b} {item}.",
        f"Later {name} {verb} {b}.",
    ])
    r = x - b
    a = rng.choice([
        f"After that, {pro} has {x} - {b} = {r} {item}.",
        f"{x} - {b} = {r}, so {pro} now has {r}.",
        f"Taking away {b} leaves {x} - {b} = {r}.",
    ])
    return q, a, r


def _step_mul(rng, x, name, pro, item):
    ks = [k for k in (2, 3) if x * k <= 90]
    if not ks:
        return None
    k = rng.choice(ks)
    word = {2: "twice", 3: "three times"}[k]
    q = rng.choice([
        f"Then the number of {item} grows to {word} as many.",
        f"{_cap(pro)} ends up with {word} as many {item}.",
    ])
    r = x * k
    a = rng.choice([
        f"{_cap(word)} as many is {x} * {k} = {r} {item}.",
        f"{x} * {k} = {r}, so {pro} now has {r}.",
    ])
    return q, a, r


def _step_div(rng, x, name, pro, item):
    ks = [k for k in (2, 3) if x % k == 0 and x // k >= 1]
    if not ks:
        return None
    k = rng.choice(ks)
    q = rng.choice([
        f"{_cap(pro)} splits them into {k} equal groups and keeps one group.",
        f"Then {pro} shares them equally with {k - 1} others and keeps one share.",
    ])
    r = x // k
    a = rng.choice([
        f"One of {k} equal parts is {x} / {k} = {r} {item}.",
        f"{x} / {k} = {r}, so {pro} keeps {r}.",
    ])
    return q, a, r


_STEPS = [(_step_add, 4), (_step_sub, 4), (_step_mul, 1), (_step_div, 1)]


def make_problem(rng: random.Random, n_steps: int | None = None) -> dict:
    """One GSM8K-format problem with 1-2 arithmetic steps on 1-2 digit numbers."""
    if n_steps is None:
        n_steps = rng.choice([1, 1, 2, 2, 2])
    name, pro = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    x = rng.randint(2, 50)
    qs = [f"{name} has {x} {item}."]
    ans = [rng.choice([f"{name} starts with {x} {item}.", f"At first {pro} has {x}."])]
    funcs, weights = zip(*_STEPS)
    done = 0
    while done < n_steps:
        f = rng.choices(funcs, weights)[0]
        out = f(rng, x, name, pro, item)
        if out is None:
            continue
        q, a, x = out
        qs.append(q)
        ans.append(a)
        done += 1
    qs.append(rng.choice([
        f"How many {item} does {name} have now?",
        f"How many {item} does {name} have at the end?",
    ]))
    ans.append(f"#### {x}")
    return {"question": " ".join(qs), "answer": "\n".join(ans)}


def generate_problems(n: int, seed: int, exclude: Iterable[str] = ()) -> list[dict]:
    """``n`` distinct problems from a seeded generator, skipping ``exclude`` questions."""
    rng = random.Random(seed)
    seen = set(exclude)
    out = []
    while len(out) < n:
        p = make_problem(rng)
        if p["question"] in seen:
            continue
        seen.add(p["question"])
        out.append(p)
    return out


# ---------------------------------------------------------------------------
# Free-form text (gives sampling real uncertainty)
# ---------------------------------------------------------------------------

_PLACES = ["park", "market", "library", "river", "garden", "station", "beach", "forest",
           "school", "bakery", "museum", "harbor", "hill", "village", "farm", "bridge"]
_ADJS = ["quiet", "sunny", "cold", "windy", "bright", "rainy", "warm", "gray", "calm",
         "busy", "strange", "long", "lovely", "dark", "cheerful", "foggy"]
_TIMES = ["morning", "afternoon", "evening", "day", "night", "weekend"]
_ANIMALS = ["dog", "cat", "bird", "fox", "horse", "duck", "rabbit", "goat", "owl", "frog"]
_THINGS = ["old tree", "red door", "small boat", "wooden bench", "stone wall", "blue kite",
           "tall tower", "green lamp", "broken cart", "paper map"]
_FEEL = ["happy", "tired", "curious", "surprised", "calm", "hungry", "proud", "sleepy"]
_VERBS = ["saw", "found", "followed", "watched", "painted", "heard", "met", "noticed"]
_ENDS = [
    "Then {pro} went home.", "It was a good {time}.", "{Pro} smiled and walked on.",
    "Nobody else knew about it.", "{Pro} told {friend} the whole story.",
    "After a while, it started to rain.", "{Pro} wanted to come back soon.",
]


def make_story(rng: random.Random) -> str:
    """A short template story with many random choices."""
    name, pro = rng.choice(NAMES)
    Pro = _cap(pro)
    n_sent = rng.randint(2, 5)
    sents = [rng.choice([
        f"On a {rng.choice(_ADJS)} {rng.choice(_TIMES)}, {name} went to the {rng.choice(_PLACES)}.",
        f"{name} walked to the {rng.choice(_PLACES)} one {rng.choice(_ADJS)} {rng.choice(_TIMES)}.",
        f"One {rng.choice(_TIMES)}, {name} felt {rng.choice(_FEEL)} and visited the {rng.choice(_PLACES)}.",
    ])]
    for _ in range(n_sent):
        sents.append(rng.choice([
            f"{Pro} {rng.choice(_VERBS)} a {rng.choice(_ADJS)} {rng.choice(_ANIMALS)} near the {rng.choice(_THINGS)}.",
            f"There was a {rng.choice(_THINGS)} by the {rng.choice(_PLACES)}.",
            f"The {rng.choice(_ANIMALS)} looked {rng.choice(_FEEL)}.",
            f"{Pro} felt {rng.choice(_FEEL)} and {rng.choice(_VERBS)} the {rng.choice(_THINGS)}.",
            f"{Pro} counted {rng.randint(2, 99)} {rng.choice(ITEMS)} on the {rng.choice(_THINGS)}.",
            f"{Pro} {rng.choice(_VERBS)} {rng.choice(FRIENDS)} at the {rng.choice(_PLACES)}.",
        ]))
    sents.append(rng.choice(_ENDS).format(
        pro=pro, Pro=Pro, time=rng.choice(_TIMES), friend=rng.choice(FRIENDS)))
    return " ".join(sents)


def iter_stories(n: int, seed: int) -> Iterator[str]:
    rng = random.Random(seed)
    for _ in range(n):
        yield make_story(rng)
