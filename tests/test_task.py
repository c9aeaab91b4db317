"""Scorer / generator tests for the evaluation task, scripts.harness.task (stdlib only, fast)."""

import pathlib
import random

from scripts.harness import task

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_extract_answer_basic():
    assert task.extract_answer("blah\n#### 42") == "42"
    assert task.extract_answer("#### 1,234") == "1234"
    assert task.extract_answer("####5.0") == "5"
    assert task.extract_answer("#### -7") == "-7"
    assert task.extract_answer("#### $12.") == "12"
    assert task.extract_answer("#### 2.5") == "2.5"
    assert task.extract_answer("no marker 42") is None
    assert task.extract_answer("") is None
    assert task.extract_answer(None) is None
    assert task.extract_answer("#### ") is None
    assert task.extract_answer("#### abc") is None


def test_extract_uses_last_marker_and_first_line():
    assert task.extract_answer("#### 1\nmore\n#### 2") == "2"
    assert task.extract_answer("#### 17\nQuestion: x has 5") == "17"


def test_score():
    gold = "Tom has 3 + 4 = 7.\n#### 7"
    assert task.score("3 + 4 = 7\n#### 7", gold)
    assert task.score("#### 7.0", gold)
    assert not task.score("#### 8", gold)
    assert not task.score("7", gold)  # no marker -> wrong
    assert task.score("#### 1,234", "#### 1234")
    assert task.score("#### 5", "5")  # bare gold number
    assert task.accuracy(["#### 1", "#### 3"], ["#### 1", "#### 2"]) == 0.5


def test_format_prompt():
    p = task.format_prompt("  How many? ")
    assert p == "Question: How many?\nAnswer:"
    assert task.format_example("Q?", "A\n#### 1") == "Question: Q?\nAnswer: A\n#### 1"


def test_generator_deterministic_and_consistent():
    a = task.generate_problems(50, seed=3)
    b = task.generate_problems(50, seed=3)
    assert a == b
    assert len({p["question"] for p in a}) == 50
    for p in a:
        assert p["answer"].splitlines()[-1].startswith("#### ")
        # every reasoning line "x op y = z" is arithmetically right
        for line in p["answer"].splitlines()[1:-1]:
            toks = line.replace(",", "").replace(".", "").split()
            i = toks.index("=")
            x, op, y, z = int(toks[i - 3]), toks[i - 2], int(toks[i - 1]), int(toks[i + 1])
            want = {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[op]
            assert want == z
            if op == "/":
                assert x % y == 0
        assert task.score(p["answer"], p["answer"])
    assert isinstance(task.make_story(random.Random(0)), str)


def test_heldout_split_is_the_one_training_excluded(tmp_path):
    """The committed held-out split is the one ``scripts.models.train_pair`` generates (same seed and size), and none of
    its questions is in the training corpus that ``train_pair`` builds with its training seed."""
    from scripts.models import train_pair

    committed = ROOT / "data" / "gsm_synth_test.jsonl"
    rows = task.load_jsonl(committed)
    assert len(rows) == train_pair.TEST_N
    assert all(task.extract_answer(r["answer"]) is not None for r in rows)
    probs, _, test = train_pair.build_data(tmp_path)
    assert test == rows
    assert (tmp_path / "gsm_synth_test.jsonl").read_text() == committed.read_text()
    prefix = "Question: "
    assert all(doc.startswith(prefix) for doc in probs)
    train_q = {doc[len(prefix):doc.index("\nAnswer:")] for doc in probs}
    assert len(train_q) > 1000
    assert not train_q & {r["question"] for r in rows}
