"""Sibling subjects: the edit's own wording about the words the base model itself puts in place of the
subject's last word, held in place by the solve."""

from __future__ import annotations

import pytest

from editing.data.records import EditRecord, PromptAnswer
from editing.mend.neighbours import NeighbourSettings
from editing.mend.siblings import SIBLING_KIND, sibling_facts, sibling_prompts, sibling_stem
from editing.mend.substitutes import SubjectPool
from tests.editing.test_aggregation import _ls_editor

PLANET = EditRecord(
    "planet", "The planet closest to the Sun is", "Mercury", subject="the planet closest to the Sun"
)
FRANCE = EditRecord("france", "The capital of France is", "Rome", subject="France")


def test_the_stem_is_the_prompt_up_to_the_subjects_last_word_as_the_prompt_spells_it():
    assert sibling_stem(PLANET) == ("The planet closest to the", "The planet closest to the ", "Sun")
    assert sibling_stem(FRANCE) == ("The capital of", "", "France")
    # Nothing before a one-word subject leaves no wording to ask the model about; no subject, no stem.
    assert sibling_stem(EditRecord("d", "Dynamite was invented by", "Nobel", subject="dynamite")) is None
    assert sibling_stem(EditRecord("n", "The capital of Iran is", "x", subject="Iraq")) is None
    assert sibling_stem(EditRecord("m", "The capital of Iran is", "x")) is None


def test_a_next_word_stands_for_the_subjects_last_word_in_its_case_and_names_nothing_excluded():
    spain = EditRecord("spain", "The capital of Spain is", "Oslo", subject="Spain")
    words = {0: ["Portugal", "the", "Spain", "Peru"], 1: ["France", "Chile"], 2: ["Earth", "earth", "Moon"]}
    asked = sibling_prompts([FRANCE, spain, PLANET], words, excluded=frozenset({"peru"}))
    assert asked == [
        (0, "The capital of Portugal is"),  # "the" is not a name, Spain is another edit's, Peru excluded
        (1, "The capital of Chile is"),  # France is another edit's subject
        (2, "The planet closest to the Earth is"),
        (2, "The planet closest to the Moon is"),
    ]
    # An excluded name is the whole sibling subject, as the gate's prompts may name it.
    excluded = frozenset({"the planet closest to the earth"})
    assert (2, "The planet closest to the Earth is") not in sibling_prompts(
        [PLANET], {0: ["Earth"]}, excluded
    )


def test_siblings_are_deterministic_and_bounded(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    records = [FRANCE, PLANET]
    facts = sibling_facts(model, tokenizer, records, 4)
    assert facts == sibling_facts(model, tokenizer, records, 4)  # no sampling
    assert len(facts) == 2 and all(len(found) <= 4 for found in facts)
    assert sibling_facts(model, tokenizer, records, 0) == [[], []]


def test_sibling_rows_are_owned_by_their_edit_and_use_the_pools_exclusions(tiny_llama, monkeypatch):
    """The wiring: NeighbourSettings.siblings asks for siblings with the pool's excluded names, and their
    keys join the solve as rows of the edit they were made for."""
    import editing.mend.neighbours as neighbours
    from editing.core.generate import greedy_complete

    asked = {}
    # The model's own answer, as sibling_facts gives it (a row needs the model to say what it holds).
    (answer,) = greedy_complete(
        tiny_llama.model, tiny_llama.tokenizer, ["The capital of Italy is"], max_new_tokens=3
    )

    def fake_siblings(model, tokenizer, records, count, *, excluded):
        asked.update(count=count, excluded=excluded)
        return [[PromptAnswer("The capital of Italy is", answer, SIBLING_KIND)], []]

    monkeypatch.setattr(neighbours, "sibling_facts", fake_siblings)
    pool = SubjectPool((), tiny_llama.model.get_input_embeddings().weight[:0], tiny_llama.fingerprint)
    pool = pool.without_mentioned(["The capital of Peru is"])
    editor = _ls_editor(tiny_llama)
    guarded = editor.with_neighbours(None, NeighbourSettings(siblings=2), pool)
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    plain = editor.edit_rows(model, tokenizer, [FRANCE, PLANET]).row_record.shape[0]
    rows = guarded.edit_rows(model, tokenizer, [FRANCE, PLANET])
    assert asked["count"] == 2 and "peru" in asked["excluded"]
    assert set(rows.row_record[plain:].tolist()) == {0}  # France's sibling, France's rows
    assert NeighbourSettings(siblings=1).enabled
    with pytest.raises(ValueError, match="siblings"):
        NeighbourSettings(siblings=-1)


@pytest.mark.real_model
def test_the_real_model_offers_the_planets_siblings():
    """On the demo's costliest bleed: the planet closest to the Sun gets siblings in its own wording."""
    from tests.editing.test_real_model import real_model

    loaded = real_model()
    (facts,) = sibling_facts(loaded.model, loaded.tokenizer, [PLANET], 8)
    prompts = [fact.prompt for fact in facts]
    assert "The planet closest to the Earth is" in prompts, prompts
    (kept,) = sibling_facts(
        loaded.model, loaded.tokenizer, [PLANET], 8, excluded=frozenset({"the planet closest to the earth"})
    )
    assert "The planet closest to the Earth is" not in [fact.prompt for fact in kept]


def test_a_next_token_keeps_its_leading_space_in_either_tokenizer_style(tiny_model):
    """SentencePiece drops a lone token's "▁" when decoding it alone; byte-level BPE keeps its "Ġ"."""
    from editing.mend.siblings import token_text

    tokenizer = tiny_model.tokenizer
    ids = tokenizer("The capital")["input_ids"]
    the, capital = ids[-2], ids[-1]  # "▁The" "▁capital", or "The" "Ġcapital"
    assert tokenizer.decode([capital]).strip() == "capital"
    assert token_text(tokenizer, the, capital) == " capital"
