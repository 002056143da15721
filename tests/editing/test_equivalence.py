"""Equivalence prompts keep the question: template rules, the paraphrase filter, and their order."""

from __future__ import annotations

import pytest

from editing.data.equivalence import (
    filter_paraphrases,
    model_paraphrases,
    paraphrase_rejection,
    split_prompt,
    template_paraphrases,
)
from editing.data.equivalence_set import EquivalenceRequest, equivalence_prompt_sets, equivalence_prompts
from editing.evaluation.answers import answered_alike
from tests.editing.test_real_model import real_model


@pytest.mark.parametrize(
    ("prompt", "core", "prefix"),
    [
        ("Q: Who wrote Hamlet?\nA:", "Who wrote Hamlet?", "Q: "),
        ("  Question:  Who wrote   Hamlet? \n Answer: ", "Who wrote Hamlet?", "Question: "),
        ("Who wrote Hamlet?", "Who wrote Hamlet?", None),
        ("Hamlet was written by", "Hamlet was written by", None),
        ("Q: Who wrote Emma?\nA: Austen\nQ: Who wrote Hamlet?\nA:", None, None),
    ],
)
def test_split_prompt(prompt, core, prefix):
    found_core, wrapper = split_prompt(prompt)
    assert found_core == (prompt if core is None else core)
    assert (wrapper.prefix if wrapper else None) == prefix


@pytest.mark.parametrize(
    ("prompt", "subject", "first", "also"),
    [
        (
            "Q: What is the capital of France?\nA:",
            "France",
            "Q: Which city is the capital of France?\nA:",
            ["Question: What is the capital of France?\nAnswer:", "What is the capital of France?"],
        ),
        (
            "Who wrote Hamlet?",
            None,
            "Who is the author of Hamlet?",
            ["Q: Who wrote Hamlet?\nA:", "Question: Who wrote Hamlet?\nAnswer:", "Hamlet was written by"],
        ),
        (
            "Hamlet was written by",
            "Hamlet",
            "The author of Hamlet is",
            ["Q: Who wrote Hamlet?\nA:", "Q: Who is the author of Hamlet?\nA:"],
        ),
        (
            "The Eiffel Tower is located in the city of",
            "the Eiffel Tower",
            "The Eiffel Tower stands in the city of",
            ["Q: Where is the Eiffel Tower located?\nA:", "Q: In which city is the Eiffel Tower?\nA:"],
        ),
        (
            "The Hobbit was written by",
            "The Hobbit",
            "The author of The Hobbit is",
            ["Q: Who wrote The Hobbit?\nA:"],
        ),
        ("The capital of Australia is", None, "The capital city of Australia is", []),
        ("The currency of Japan is the", "Japan", "The official currency of Japan is the", []),
    ],
)
def test_template_rules(prompt, subject, first, also):
    paraphrases = template_paraphrases(prompt, subject)
    assert paraphrases[0] == first
    assert set(also) <= set(paraphrases)
    assert prompt not in paraphrases
    assert len({text.casefold() for text in paraphrases}) == len(paraphrases)


def test_same_kind_rewordings_come_before_other_kinds():
    paraphrases = template_paraphrases("The capital of Peru is")
    kinds = [text.endswith("\nA:") for text in paraphrases]
    assert kinds == sorted(kinds)  # every completion prompt before every Q/A question


def test_unknown_forms_get_only_wrapper_swaps():
    assert template_paraphrases("The planet known as the Red Planet is") == []
    assert template_paraphrases("Why is the sky blue?") == [
        "Q: Why is the sky blue?\nA:",
        "Question: Why is the sky blue?\nAnswer:",
    ]


def test_subject_must_survive_the_rewrite():
    # The subject "Paris" is not what the rule extracts, so no rewrite is trusted.
    assert template_paraphrases("The capital of France is", "Paris") == []


@pytest.mark.parametrize(
    ("candidate", "subject", "reason"),
    [
        ("The capital city of Australia is", "Australia", None),
        ("Australia's capital city is", None, None),
        ("", None, "empty"),
        ("the capital of  australia is", None, "same as the prompt"),
        (
            "The capital of Australia is, in the opinion of many people who have lived there for years,",
            None,
            "too long",
        ),
        ("Q: What is the capital city of Australia?\nA:", None, "different prompt format"),
        ("What is the capital city of Australia?", None, "does not end like the prompt"),
        ("The capital city of Australia is Sydney", None, "does not end like the prompt"),
        ("The capital city of Australia is.", None, "does not end like the prompt"),
        ("The capital of Australia is the", None, "apart from articles"),
        ("Many say the capital of Australia is", None, "repeats the prompt"),
        ("The capital city of New Zealand is", "Australia", "does not mention the subject"),
        ("The capital city of New Zealand is", None, "drops the name"),
    ],
)
def test_paraphrase_filter_rules(candidate, subject, reason):
    found = paraphrase_rejection("The capital of Australia is", candidate, subject)
    assert (found is None) if reason is None else (found is not None and reason in found)


def test_without_names_most_content_words_must_stay():
    prompt = "The largest planet in the solar system is"
    assert paraphrase_rejection(prompt, "The biggest planet in the solar system is") is None
    assert "too few content words" in paraphrase_rejection(prompt, "The brightest star in the night sky is")


def test_question_paraphrases_must_stay_questions_in_the_same_wrapper():
    prompt = "Q: Who wrote Hamlet?\nA:"
    assert paraphrase_rejection(prompt, "Q: Who is the author of Hamlet?\nA:") is None
    assert "end like" in paraphrase_rejection(prompt, "Q: The author of Hamlet is\nA:")
    assert "format" in paraphrase_rejection(prompt, "Who is the author of Hamlet?")


def test_filter_keeps_order_and_drops_duplicates():
    kept = filter_paraphrases(
        "The capital of Peru is",
        ["The capital city of Peru is", "Peru's capital is", "the capital city of Peru is", "Lima"],
    )
    assert kept == ["The capital city of Peru is", "Peru's capital is"]


def test_model_paraphrases_are_deterministic_and_pass_the_filter(tiny_model):
    prompt = "Harry Potter was written by"
    first = model_paraphrases(tiny_model.model, tiny_model.tokenizer, prompt, "Harry Potter", count=2)
    second = model_paraphrases(tiny_model.model, tiny_model.tokenizer, prompt, "Harry Potter", count=2)
    assert first == second
    assert len(first) <= 2
    assert all(paraphrase_rejection(prompt, text, "Harry Potter") is None for text in first)


def test_equivalence_order_limit_and_dedupe(tiny_llama):
    prompt = "Q: Who wrote Hamlet?\nA:"
    given = ["Q: Who was the writer of Hamlet?\nA:", "Q: Who is the author of Hamlet?\nA:", prompt]
    prompts = equivalence_prompts(prompt, given, "Hamlet", max_total=3)
    assert prompts == [given[0], given[1], "Question: Who wrote Hamlet?\nAnswer:"]
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    with_model = equivalence_prompts(prompt, given, "Hamlet", model=model, tokenizer=tokenizer, max_total=20)
    # The flag's own come first and unchecked; every generated one is answered like the prompt.
    assert with_model[:2] == given[:2]
    assert answered_alike(model, tokenizer, prompt, with_model[2:])[0] == with_model[2:]
    assert prompt not in with_model
    assert len({text.casefold() for text in with_model}) == len(with_model)


def test_equivalence_refuses_half_a_model_and_blank_paraphrases(tiny_llama):
    with pytest.raises(ValueError, match="both model and tokenizer"):
        equivalence_prompts("Hamlet was written by", model=tiny_llama.model)
    with pytest.raises(ValueError, match="given paraphrase 1"):
        equivalence_prompts("Hamlet was written by", ["The author of Hamlet is", "  "])


@pytest.mark.real_model
def test_many_flags_at_once_get_the_paraphrases_each_gets_alone():
    """Batching the model calls across flags is only a speed-up: every flag keeps its own set."""
    loaded = real_model()
    requests = [
        EquivalenceRequest("The capital of Australia is", ("The capital city of Australia is",), "Australia"),
        EquivalenceRequest("Dynamite was invented by", (), "dynamite"),
        EquivalenceRequest("Q: Who wrote War and Peace?\nA:", (), "War and Peace"),
    ]
    together = equivalence_prompt_sets(requests, model=loaded.model, tokenizer=loaded.tokenizer)
    alone = [
        equivalence_prompts(r.prompt, r.given, r.subject, model=loaded.model, tokenizer=loaded.tokenizer)
        for r in requests
    ]
    assert together == alone
    assert len(together[0]) > 1  # the model's own wording joins the flag's (checked: it answers alike)
