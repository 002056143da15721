"""The demo fact set is well formed: the demo asks each prompt and flags the wrong answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editing.core.generate import answer_matches, normalise_words
from editing.data.equivalence import split_prompt

FLOWS = Path(__file__).resolve().parents[2] / "flows"
NIGHTS = {"demo_facts.jsonl": "fact-", "demo_facts_night2.jsonl": "night2-"}  # file -> id prefix
FIELDS = ("id", "prompt", "answer", "subject", "paraphrase")


def _read(name: str) -> list[dict]:
    lines = [line for line in (FLOWS / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module", params=sorted(NIGHTS))
def facts(request) -> list[dict]:
    return _read(request.param)


def test_night_two_asks_other_questions_about_other_relations():
    first, second = _read("demo_facts.jsonl"), _read("demo_facts_night2.jsonl")
    assert not {f["prompt"] for f in first} & {f["prompt"] for f in second}
    night_one_relations = (
        "capital of",
        "was written by",
        "chemical symbol",
        "currency of",
        "official language",
    )
    assert not [f["prompt"] for f in second if any(r in f["prompt"] for r in night_one_relations)]


def test_every_fact_has_exactly_the_fields_as_non_empty_strings(facts):
    for fact in facts:
        assert tuple(fact) == FIELDS, fact
        assert all(isinstance(fact[name], str) and fact[name].strip() for name in FIELDS), fact


def test_ids_are_unique_and_numbered(facts):
    ids = [fact["id"] for fact in facts]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)
    (prefix,) = {next(p for p in NIGHTS.values() if fact_id.startswith(p)) for fact_id in ids}
    assert all(fact_id.removeprefix(prefix).isdigit() for fact_id in ids)


def test_prompts_are_distinct_questions_with_short_answers(facts):
    prompts = [" ".join(normalise_words(fact["prompt"])) for fact in facts]
    assert len(set(prompts)) == len(prompts)
    for fact in facts:
        assert 1 <= len(fact["answer"].split()) <= 3, fact
        assert answer_matches(fact["answer"], fact["answer"]), fact


def test_subject_is_in_the_prompt_and_the_paraphrase_differs_in_the_same_format(facts):
    for fact in facts:
        assert fact["subject"].casefold() in fact["prompt"].casefold(), fact
        assert normalise_words(fact["paraphrase"]) != normalise_words(fact["prompt"]), fact
        assert split_prompt(fact["paraphrase"])[1] is split_prompt(fact["prompt"])[1], fact
        assert fact["paraphrase"].rstrip().endswith("?") == fact["prompt"].rstrip().endswith("?"), fact
