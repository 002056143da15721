"""Relations recovered from CounterFact records, and the protected-key sources: nothing scored."""

from __future__ import annotations

import pytest

from editing.data.protected_sources import normalise, protected_sources, scored_prompts
from editing.data.records import EditRecord, PromptAnswer, read_records
from editing.data.relations import relation_labels, template
from tests.paths import DATA_DIR

COUNTERFACT_TRAIN = DATA_DIR / "counterfact_easyedit_splits/counterfact-train.json"


def _record(prompt: str, subject: str, neighbour: str = "") -> EditRecord:
    locality = (PromptAnswer(neighbour, "x"),) if neighbour else ()
    return EditRecord(prompt, prompt, "y", subject=subject, locality=locality)


def test_templates_linked_by_neighbours_share_a_relation_and_others_do_not():
    records = [
        _record(
            "The mother tongue of Danielle Darrieux is",
            "Danielle Darrieux",
            "Michel Rocard is a native speaker of",
        ),
        _record("Jean Gabin is a native speaker of", "Jean Gabin"),
        _record("The capital of France is", "France", "The capital of Spain is"),
        _record("A prompt without its subject", "nobody"),
    ]
    labels = relation_labels(records)
    assert template(records[0]) == "The mother tongue of {} is"
    assert labels[0] == labels[1]  # linked through the neighbour's wording
    assert len({labels[0], labels[2], labels[3]}) == 3  # nothing is guessed for the last one


def test_counterfact_train_falls_into_a_few_dozen_relations():
    records = read_records(COUNTERFACT_TRAIN).records
    labels = relation_labels(records)
    assert 15 <= len(set(labels)) <= 60  # CounterFact has 34 relations; a few wordings merge
    by_prompt = {r.prompt: label for r, label in zip(records, labels, strict=True)}
    languages = [label for prompt, label in by_prompt.items() if prompt.startswith("The mother tongue of")]
    capitals = [label for prompt, label in by_prompt.items() if prompt.startswith("The capital of")]
    assert len(set(languages)) == 1 and set(languages) != set(capitals)


@pytest.fixture(scope="module")
def sources():
    training = read_records(COUNTERFACT_TRAIN, limit=2000).records
    exclude = [r.prompt for r in training]
    return protected_sources(DATA_DIR, texts=2000, facts=3000, exclude=exclude), exclude


def test_protected_sources_hold_nothing_that_an_evaluation_scores(sources):
    chosen, exclude = sources
    scored = scored_prompts(DATA_DIR)
    used = {normalise(text) for text in chosen.texts} | {normalise(fact.prompt) for fact in chosen.facts}
    assert len(chosen.texts) == 2000 and len(chosen.facts) > 5000
    assert not used & scored
    assert not used & {normalise(prompt) for prompt in exclude}
    # The exclusion is doing work: the edit split and ME-PPL do overlap what is scored.
    assert chosen.excluded > 1000


def test_every_scored_file_contributes_to_the_excluded_set():
    scored = scored_prompts(DATA_DIR)
    val = read_records(DATA_DIR / "counterfact_easyedit_splits/counterfact-val.json", limit=1).records[0]
    zsre = read_records(
        DATA_DIR / "zsre_mend_portability/zsre_mend_eval_portability_gpt4.json", limit=1
    ).records[0]
    knowedit = read_records(DATA_DIR / "knowedit_zsre/ZsRE-test-all.json", limit=1).records[0]
    for prompt in (
        val.prompt,
        val.rephrase_prompts[0],
        val.locality[0].prompt,
        zsre.prompt,
        knowedit.locality[0].prompt,
    ):
        assert normalise(prompt) in scored
