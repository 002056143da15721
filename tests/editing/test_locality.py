"""Locality pool: the champion's own answers, model embeddings, hard-neighbour selection, pool files."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import editing.data.locality as locality
from editing.core.generate import greedy_complete
from editing.data.locality import (
    build_locality_pool,
    load_pool,
    mentions,
    prompt_embeddings,
    save_pool,
    select_locality,
)
from editing.data.records import PromptAnswer, RecordError
from editing.evaluation.answers import first_clause

PROMPTS = ["The capital of France is", "Harry Potter was written by", "Sega makes", "The capital of Italy is"]


def test_pool_records_the_models_own_answers(tiny_model):
    built = build_locality_pool(tiny_model.model, tiny_model.tokenizer, [*PROMPTS, PROMPTS[0].upper(), " "])
    completions = greedy_complete(tiny_model.model, tiny_model.tokenizer, PROMPTS, max_new_tokens=6)
    answered = {prompt: first_clause(text) for prompt, text in zip(PROMPTS, completions, strict=True) if text}
    assert {item.prompt: item.answer for item in built.pool} == answered
    assert {item.kind for item in built.pool} <= {"pool"}
    reasons = {rejected.prompt: rejected.reason for rejected in built.rejected}
    assert reasons[PROMPTS[0].upper()] == "duplicate prompt"
    assert reasons[" "] == "empty prompt"
    assert len(built.pool) + len(built.rejected) == len(PROMPTS) + 2  # nothing is lost


def test_pool_answers_end_at_the_first_clause(tiny_llama, monkeypatch):
    def rambles(_model, _tokenizer, prompts, **_kwargs):
        return ["Paris, the city of light" if "France" in prompt else "Hanoi." for prompt in prompts]

    monkeypatch.setattr(locality, "greedy_complete", rambles)
    built = build_locality_pool(tiny_llama.model, tiny_llama.tokenizer, PROMPTS[:2])
    assert [item.answer for item in built.pool] == ["Paris", "Hanoi"]


def test_empty_completions_are_returned_with_a_reason(tiny_llama, monkeypatch):
    def completes_nothing_for_sega(_model, _tokenizer, prompts, **_kwargs):  # a model that says nothing
        return ["" if prompt == "Sega makes" else "an answer" for prompt in prompts]

    monkeypatch.setattr(locality, "greedy_complete", completes_nothing_for_sega)
    built = build_locality_pool(tiny_llama.model, tiny_llama.tokenizer, PROMPTS)
    assert [item.prompt for item in built.pool] == [p for p in PROMPTS if p != "Sega makes"]
    assert [(r.prompt, r.reason) for r in built.rejected] == [("Sega makes", "empty completion")]


def test_embeddings_are_unit_rows_that_ignore_padding(tiny_model):
    embeddings = prompt_embeddings(tiny_model.model, tiny_model.tokenizer, PROMPTS, batch_size=3)
    assert embeddings.shape == (len(PROMPTS), tiny_model.model.config.hidden_size)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(PROMPTS)))
    # Each prompt alone (no padding) embeds as it does batched by length with others (padded), and the
    # rows come back in the callers' order.
    for index, prompt in enumerate(PROMPTS):
        alone = prompt_embeddings(tiny_model.model, tiny_model.tokenizer, [prompt])
        torch.testing.assert_close(alone[0], embeddings[index], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(embeddings[0], embeddings[1])
    assert prompt_embeddings(tiny_model.model, tiny_model.tokenizer, []).shape == (0, embeddings.shape[1])


POOL = [
    PromptAnswer("Where is the Louvre?", "Paris", "pool"),  # most similar, but mentions the subject
    PromptAnswer("The Eiffel Tower is in", "Paris", "pool"),  # the edit prompt itself
    PromptAnswer("Rome is the capital of", "Italy", "pool"),  # mentions the correction
    PromptAnswer("The Colosseum is in", "Rome", "pool"),
    PromptAnswer("Big Ben is in", "London", "pool"),
    PromptAnswer("Mount Fuji is in", "Japan", "pool"),
    PromptAnswer("The Nile flows through", "Egypt", "pool"),
    PromptAnswer("Sega makes", "games", "pool"),
]
# Cosine similarity to the edit (direction [1, 0]) falls with the index.
ANGLES = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 1.5])
POOL_EMBEDDINGS = torch.stack([ANGLES.cos(), ANGLES.sin()], dim=1) * 3  # length must not matter
EDIT = "The Eiffel  tower is in"


def select(**options):
    return select_locality(
        [EDIT],
        ["the Louvre"],
        POOL,
        POOL_EMBEDDINGS,
        torch.tensor([[1.0, 0.0]]),
        corrections=["Rome"],
        **options,
    )[0]


def test_hard_neighbours_are_the_most_similar_prompts_about_something_else():
    chosen = select(hard=2, random=2, seed=0)
    assert [item.prompt for item in chosen[:2]] == ["The Colosseum is in", "Big Ben is in"]
    assert [item.kind for item in chosen] == ["hard_neighbour"] * 2 + ["random"] * 2
    assert {item.prompt for item in chosen[2:]} <= {p.prompt for p in POOL[5:]}
    assert len({item.prompt for item in chosen}) == 4
    assert all(item.answer == next(p.answer for p in POOL if p.prompt == item.prompt) for item in chosen)


def test_selection_is_deterministic_and_the_seed_matters():
    assert select(seed=3) == select(seed=3)
    samples = {tuple(item.prompt for item in select(hard=0, random=2, seed=seed)) for seed in range(8)}
    assert len(samples) > 1


def test_same_edit_gets_the_same_probes_whatever_the_batch():
    other = "Sega makes"
    batch = select_locality(
        ["Big Ben is in", EDIT],
        [None, "the Louvre"],
        POOL,
        POOL_EMBEDDINGS,
        torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
        corrections=[other, "Rome"],
    )
    assert batch[1] == select()
    assert all(item.prompt not in {"Big Ben is in", other} for item in batch[0])


def test_too_few_eligible_prompts_gives_fewer_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="editing.data.locality"):
        chosen = select(hard=3, random=10)
    assert len(chosen) == 5  # eight pool prompts, three excluded
    assert "only 5 eligible" in caplog.text


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="subjects"):
        select_locality([EDIT], [], POOL, POOL_EMBEDDINGS, torch.ones(1, 2))
    with pytest.raises(ValueError, match="pool_embeddings"):
        select_locality([EDIT], [None], POOL, POOL_EMBEDDINGS[:3], torch.ones(1, 2))
    with pytest.raises(ValueError, match="width"):
        select_locality([EDIT], [None], POOL, POOL_EMBEDDINGS, torch.ones(1, 3))


@pytest.mark.parametrize(
    ("text", "phrase", "expected"),
    [
        ("Where is the Louvre?", "the louvre", True),
        ("Parisian cafés serve", "Paris", False),
        ("The Sagrada Família is in", "Sagrada Familia", True),
        ("Anything", None, False),
    ],
)
def test_mentions_whole_words(text, phrase, expected):
    assert mentions(text, phrase) is expected


def test_pool_file_round_trip(tmp_path):
    path = save_pool(tmp_path / "pools" / "pool.jsonl", POOL, champion_version="7", fingerprint="abc")
    pool, metadata = load_pool(path)
    assert pool == POOL
    assert (metadata.champion_version, metadata.fingerprint, metadata.size) == ("7", "abc", len(POOL))
    assert not list(path.parent.glob("*.partial"))
    empty, empty_metadata = load_pool(
        save_pool(tmp_path / "empty.jsonl", [], champion_version="1", fingerprint="f")
    )
    assert empty == [] and empty_metadata.size == 0


def test_broken_pool_files_name_the_line_and_field(tmp_path):
    path = save_pool(tmp_path / "pool.jsonl", POOL[:2], champion_version="1", fingerprint="f")
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"prompt": "Big Ben is in", "answer": ""})
    path.write_text("\n".join(lines))
    with pytest.raises(RecordError, match="record 2: field 'answer'"):
        load_pool(path)
    path.write_text("\n".join(lines[:2]))
    with pytest.raises(RecordError, match="field 'size'"):
        load_pool(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(RecordError, match="field 'format'"):
        load_pool(path)
