"""Same-subject locality: the edited subject's other facts, kept apart from neighbour probes in training
and in evaluation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from editing.config import ConfigError, EditorConfig, TrainConfig
from editing.core.targets import resolve_scope
from editing.data.records import EditRecord, PromptAnswer, read_records
from editing.data.training_data import encode_training_examples, split_locality
from editing.evaluation.evaluate import QueryScore, RecordScores, aggregate, compare_scores
from editing.mend.editor_net import MendNetwork
from editing.training.objective import consecutive_groups
from editing.training.trainer import EditorTrainer
from tests.paths import DATA_DIR

COUNTERFACT_TRAIN = DATA_DIR / "counterfact_easyedit_splits/counterfact-train.json"


@pytest.fixture(scope="module")
def records():
    """CounterFact records, each given a same-subject probe (another fact of its subject)."""
    plain = read_records(COUNTERFACT_TRAIN, limit=16).records
    return [
        replace(
            r, locality=(*r.locality, PromptAnswer(f"{r.subject} is a citizen of", "France", "same_subject"))
        )
        for r in plain
    ]


def _loss(loaded, examples, *, weight: float, step_size: float, batched: bool = True):
    scope = resolve_scope(loaded.model)
    torch.manual_seed(0)
    network = MendNetwork(scope.layers, EditorConfig(init_step_size=1e-3, aggregation="sum"))
    config = TrainConfig(batch_size=4, val_records=4, bf16_autocast=False, same_subject_loss_weight=weight,
                         batched_edits=batched)  # fmt: skip
    trainer = EditorTrainer(
        loaded.model, loaded.tokenizer, scope, network, examples[4:], examples[:4], config
    )
    trainer.network.eval()
    with torch.no_grad():
        trainer.network.step_sizes.fill_(step_size)
        loss, metrics = trainer.objective(consecutive_groups(examples[:4], 1))
    return float(loss), metrics


def test_probes_split_by_kind_and_examples_carry_the_same_subject_one(tiny_llama, records):
    neighbours, same = split_locality(records[0].locality)
    assert [p.kind for p in neighbours] == ["neighborhood"] and [p.kind for p in same] == ["same_subject"]
    example = encode_training_examples(tiny_llama.tokenizer, records[:1])[0]
    assert example.same_subject is not None and example.sequences()[-1] == example.same_subject[0]
    knowedit_like = EditRecord("k", "p", "t", rephrase_prompts=("q",),
                               locality=(PromptAnswer("The rank of X is", "genus", "Relation_Specificity"),))  # fmt: skip
    only_same = encode_training_examples(tiny_llama.tokenizer, [knowedit_like])[0]
    assert only_same.locality == only_same.same_subject  # the only probe serves as locality too


def test_the_same_subject_term_has_its_own_weight_and_is_zero_without_an_edit(tiny_llama, records):
    examples = encode_training_examples(tiny_llama.tokenizer, records)
    plain = [replace(e, same_subject=None) for e in examples]
    without, _ = _loss(tiny_llama, plain, weight=1.0, step_size=1.0)
    ignored, _ = _loss(tiny_llama, examples, weight=0.0, step_size=1.0)
    assert ignored == pytest.approx(without, rel=1e-5)  # extra sequences do not shift the other terms
    _, unedited = _loss(tiny_llama, examples, weight=1.0, step_size=0.0)
    # Zero up to float32 rounding: the pre- and post-edit passes batch the probe with different
    # neighbours (the post-edit pass by length), so their products round differently.
    assert unedited["same_subject_kl"] == pytest.approx(0.0, abs=1e-6)
    assert unedited["same_subject_unchanged"] == 1.0
    weighted, edited = _loss(tiny_llama, examples, weight=2.0, step_size=1.0)
    assert edited["same_subject_kl"] > 1e-6
    assert weighted == pytest.approx(without + 2.0 * edited["same_subject_kl"], rel=1e-5)
    reference, _ = _loss(tiny_llama, examples, weight=2.0, step_size=1.0, batched=False)
    assert weighted == pytest.approx(reference, rel=1e-5)


def test_training_mix_and_weight_are_validated():
    with pytest.raises(ConfigError, match="training_mix"):
        TrainConfig(training_mix="wikipedia")
    with pytest.raises(ConfigError, match="same_subject_loss_weight"):
        TrainConfig(same_subject_loss_weight=-1.0)
    assert TrainConfig.from_dict(TrainConfig(training_mix="generated").to_dict()).training_mix == "generated"


def _query(predictions: list[int]) -> QueryScore:
    uniform = torch.full((len(predictions), 2), math.log(0.5))
    return QueryScore(1.0, True, torch.tensor(predictions), uniform)


def test_evaluation_reports_neighbour_and_same_subject_locality_apart(tiny_llama):
    record = EditRecord("r", "The capital of France is", "Rome", subject="France", locality=(
        PromptAnswer("The capital of Spain is", "Madrid", "neighborhood"),
        PromptAnswer("The language of France is", "French", "same_subject"),
        PromptAnswer("France is in", "Europe", "Relation_Specificity"),
    ))  # fmt: skip
    rewrite = QueryScore(1.0, True, torch.tensor([1]))
    before = RecordScores(rewrite, locality=[_query([1]), _query([2]), _query([3])])
    after = RecordScores(rewrite, locality=[_query([1]), _query([0]), _query([3])])
    row = compare_scores(record, before, after, tiny_llama.tokenizer)
    assert row["locality_neighbour"] == 1.0 and row["locality_same_subject"] == 0.5
    assert row["locality_unchanged"] == pytest.approx(2 / 3)
    neighbour_only = replace(record, locality=record.locality[:1])
    row = compare_scores(neighbour_only, RecordScores(rewrite, locality=before.locality[:1]),
                         RecordScores(rewrite, locality=after.locality[:1]), tiny_llama.tokenizer)  # fmt: skip
    assert row["locality_same_subject"] is None
    assert aggregate([row])["locality_same_subject"] is None


def test_a_flags_same_subject_probes_are_its_subjects_other_facts(tiny_llama):
    from editing.core.confidence import confident_answers
    from editing.data.same_subject import SubjectEdit, same_subject_probes

    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    edit = SubjectEdit("The capital of France is", "France", "Rome")
    ((reference, _),) = confident_answers(model, tokenizer, [edit.prompt], max_new_tokens=6, batch_size=4)
    pool = [
        PromptAnswer("The capital city of France is", reference, "pool"),  # the edited fact, reworded
        PromptAnswer("The language of France is", "French", "pool"),  # another fact of France
        PromptAnswer("The language of Spain is", "Spanish", "pool"),  # another subject: a neighbour
        PromptAnswer("France is famous for Rome", "Rome", "pool"),  # gives the correction
    ]
    probes, none, nobody = same_subject_probes(
        model, tokenizer, [edit, SubjectEdit("Who?", None, "x"), edit], pool, per_edit=3, min_probability=0.0
    )
    assert probes[0] == PromptAnswer("The language of France is", "French", "same_subject")
    assert len(probes) == 3 and all(p.kind == "same_subject" and "France" in p.prompt for p in probes)
    assert all(not p.prompt.startswith("The capital city") for p in probes)
    assert none == [] and nobody == probes
    assert same_subject_probes(model, tokenizer, [edit], pool, per_edit=0) == [[]]


def test_a_templated_fact_needs_its_whole_first_word_known_not_just_its_first_token(tiny_llama):
    """A year the model guesses digit by digit starts with a sure "2": such answers are no facts."""
    from editing.core.confidence import FIRST_WORD, confident_answers
    from editing.data.relation_templates import load_templates
    from editing.data.same_subject import SubjectEdit, edit_kinds, same_subject_probes

    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    edit, templates = SubjectEdit("The official language of France is", "France", "Rome"), load_templates()
    assert edit_kinds(edit, templates) == {"country", "place"}  # a cue of relation_templates.json
    questions = [relation.prompt(0, "France") for relation in templates.for_kinds({"country", "place"})]
    ((reference, _),) = confident_answers(model, tokenizer, [edit.prompt], max_new_tokens=6, batch_size=4)
    by_token = confident_answers(model, tokenizer, questions, max_new_tokens=6, batch_size=16)
    by_word = confident_answers(
        model, tokenizer, questions, max_new_tokens=6, batch_size=16, confidence=FIRST_WORD
    )  # fmt: skip
    threshold = sorted(p for _, p in by_token)[len(questions) // 4]
    offered = [
        (question, answer, token, word)
        for question, (answer, token), (_, word) in zip(questions, by_token, by_word, strict=True)
        if answer.strip() and answer != reference and token >= threshold
    ]
    sure_start = [question for question, _, _, word in offered if word < threshold]
    sure_word = [question for question, _, _, word in offered if word >= threshold]
    assert sure_start and sure_word, "the tiny model offers both kinds of answer"
    (probes,) = same_subject_probes(
        model, tokenizer, [edit], [], per_edit=len(questions), min_probability=threshold
    )  # fmt: skip
    prompts = {probe.prompt for probe in probes}
    assert not prompts & set(sure_start)
    assert prompts == set(sure_word)


def test_a_subjects_kind_comes_from_its_prompt_and_no_relation_is_asked_without_one(tiny_llama):
    from editing.data.relation_templates import load_templates
    from editing.data.same_subject import SubjectEdit, edit_kinds, same_subject_probes

    templates = load_templates()
    assert edit_kinds(SubjectEdit("The capital of Peru is", "Peru", "Lima"), templates) == {"country"}
    assert "person" in edit_kinds(
        SubjectEdit("The mother tongue of Ada Lovelace is", "Ada Lovelace", "x"), templates
    )
    novel = SubjectEdit("War and Peace was written by", "War and Peace", "Leo Tolstoy")
    assert edit_kinds(novel, templates) == set()
    assert (
        edit_kinds(SubjectEdit("Who wrote it?", "War and Peace", "x"), templates) == set()
    )  # not in the prompt
    pool = [PromptAnswer("War and Peace is set in", "Russia", "pool")]
    (probes,) = same_subject_probes(
        tiny_llama.model, tiny_llama.tokenizer, [novel], pool, per_edit=4, min_probability=0.0
    )  # fmt: skip
    # Only the pool's fact about the novel: no relation template is asked of a subject of unknown kind.
    assert [probe.prompt for probe in probes] == ["War and Peace is set in"]
