"""The demo fact set is well formed: the demo asks each prompt and flags the wrong answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editing.core.generate import answer_matches, normalise_words
from editing.data.equivalence import split_prompt

FACTS = Path(__file__).resolve().parents[2] / "flows" / "demo_facts.jsonl"
FIELDS = ("id", "prompt", "answer", "subject", "paraphrase")


@pytest.fixture(scope="module")
def facts() -> list[dict]:
    lines = [line for line in FACTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def test_every_fact_has_exactly_the_fields_as_non_empty_strings(facts):
    for fact in facts:
        assert tuple(fact) == FIELDS, fact
        assert all(isinstance(fact[name], str) and fact[name].strip() for name in FIELDS), fact


def test_ids_are_unique_and_numbered(facts):
    ids = [fact["id"] for fact in facts]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)
    assert all(fact_id.startswith("fact-") and fact_id[5:].isdigit() for fact_id in ids)


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
