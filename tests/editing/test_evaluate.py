"""Scoring records, comparing models before and after an edit, and the single/batch edit protocols."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch

from editing.core.apply import EditResult
from editing.core.models import fingerprint
from editing.core.tokens import encode_batch, encode_example, encode_texts
from editing.data.records import EditRecord, PromptAnswer
from editing.evaluation.evaluate import (
    EditEvaluation,
    QueryScore,
    RecordScores,
    aggregate,
    compare_scores,
    evaluate_edit,
    perplexity,
    probe_changes,
    run_batch_edit,
    run_single_edits,
    score_records,
)

RECORDS = [
    EditRecord(
        "france",
        "The capital of France is",
        "Rome",
        rephrase_prompts=("The capital of Spain is", "The capital of Italy is"),
        locality=(PromptAnswer("Harry Potter was written by", "J. K. Rowling"),),
        portability=(PromptAnswer("BBC One, by", "BBC"),),
    ),
    EditRecord(
        "potter",
        "Harry Potter was written by",
        "Microsoft",
        locality=(PromptAnswer("Sega makes", "games"), PromptAnswer("The capital of Italy is", "Rome")),
    ),
    EditRecord("bare", "Toko Yasuda, the guitar player, plays the", "piano"),
]
TEXTS = ["The capital of France is Paris.", "Sega makes games.", "Harry Potter was written by J. K. Rowling."]


class NoiseEditor:
    """A test double for an editor: deterministic random deltas per record, and a call log."""

    name = "noise"

    def __init__(self, scale: float = 0.5):
        self.scale = scale
        self.calls: list[list[str]] = []

    def edit(self, model, tokenizer, records):
        self.calls.append([record.record_id for record in records])
        seed = sum(ord(c) for record in records for c in record.record_id)
        generator = torch.Generator().manual_seed(seed)
        names = [name for name, _ in model.named_parameters() if ".mlp." in name][-3:]
        parameters = dict(model.named_parameters())
        return EditResult(
            {name: self.scale * torch.randn(parameters[name].shape, generator=generator) for name in names}
        )


def reference_accuracy(model, tokenizer, prompt: str, target: str) -> float:
    """Token accuracy from a plain full forward pass, the definition written out."""
    batch = encode_batch(tokenizer, [prompt], [target])
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids).logits[0]  # (seq, vocab)
    positions = (batch.labels[0] != -100).nonzero().flatten()
    predicted = logits[positions - 1].argmax(dim=-1)
    return float((predicted == batch.input_ids[0, positions]).float().mean())


def edited_copy(model, result: EditResult):
    copied = copy.deepcopy(model)
    result.apply(copied)
    return copied


def test_score_records_matches_the_definition(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    (scores, *_rest) = score_records(model, tokenizer, RECORDS, batch_size=3)
    assert scores.rewrite.accuracy == pytest.approx(
        reference_accuracy(model, tokenizer, "The capital of France is", "Rome")
    )
    assert [s.accuracy for s in scores.rephrase] == pytest.approx(
        [reference_accuracy(model, tokenizer, p, "Rome") for p in RECORDS[0].rephrase_prompts]
    )
    (locality,) = scores.locality
    target_tokens = len(
        encode_batch(tokenizer, ["Harry Potter was written by"], ["J. K. Rowling"]).scored_targets
    )
    assert locality.log_probs.shape == (target_tokens, len(tokenizer))
    assert torch.allclose(locality.log_probs.exp().sum(dim=-1), torch.ones(target_tokens), atol=1e-4)
    assert scores.rewrite.log_probs is None  # only locality probes keep full distributions


def test_scores_do_not_depend_on_batch_size(tiny_model):
    one = score_records(tiny_model.model, tiny_model.tokenizer, RECORDS, batch_size=1)
    many = score_records(tiny_model.model, tiny_model.tokenizer, RECORDS, batch_size=16)
    for a, b in zip(one, many, strict=True):
        assert a.rewrite.accuracy == b.rewrite.accuracy and torch.equal(
            a.rewrite.predictions, b.rewrite.predictions
        )
        for x, y in zip(a.locality, b.locality, strict=True):
            torch.testing.assert_close(x.log_probs, y.log_probs, rtol=1e-4, atol=1e-4)


def test_scoring_restores_training_mode(tiny_llama):
    tiny_llama.model.train()
    try:
        score_records(tiny_llama.model, tiny_llama.tokenizer, RECORDS[:1])
        assert tiny_llama.model.training
    finally:
        tiny_llama.model.eval()


def test_same_model_changes_nothing(tiny_model):
    evaluation = evaluate_edit(
        tiny_model.model, tiny_model.model, tiny_model.tokenizer, RECORDS, batch_size=2
    )
    assert [row["record_id"] for row in evaluation.rows] == ["france", "potter", "bare"]
    for row in evaluation.rows:
        assert row["rewrite_acc"] == row["pre_rewrite_acc"]
    locality_rows = evaluation.rows[:2]
    assert all(row["locality_unchanged"] == 1.0 for row in locality_rows)
    assert all(row["locality_kl"] == pytest.approx(0.0, abs=1e-6) for row in locality_rows)
    assert all(row["locality_drawdown"] == 0.0 for row in locality_rows)
    bare = evaluation.rows[2]
    assert (
        bare["rephrase_acc"] is None
        and bare["locality_unchanged"] is None
        and bare["portability_acc"] is None
    )


def test_two_different_modules(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    result = NoiseEditor(scale=2.0).edit(model, tokenizer, RECORDS)
    after_model = edited_copy(model, result)
    evaluation = evaluate_edit(model, after_model, tokenizer, RECORDS)
    france = evaluation.rows[0]
    assert france["pre_rewrite_acc"] == pytest.approx(
        reference_accuracy(model, tokenizer, "The capital of France is", "Rome")
    )
    assert france["rewrite_acc"] == pytest.approx(
        reference_accuracy(after_model, tokenizer, "The capital of France is", "Rome")
    )
    assert france["portability_acc"] == pytest.approx(
        reference_accuracy(after_model, tokenizer, "BBC One, by", "BBC")
    )
    # Large random deltas move the locality distributions.
    assert all(row["locality_kl"] > 1e-3 for row in evaluation.rows[:2])
    assert fingerprint(model) == tiny_model.fingerprint


def test_locality_is_averaged_per_probe(tiny_llama):
    """Probes count equally, whatever their token counts (EasyEdit averages per locality key)."""

    def query(predictions, accuracy, log_probs):
        return QueryScore(
            accuracy, accuracy == 1.0, torch.tensor(predictions), torch.log(torch.tensor(log_probs))
        )

    uniform, skewed = [0.5, 0.5], [0.25, 0.75]
    before = RecordScores(
        rewrite=QueryScore(0.0, False, torch.tensor([5])),
        locality=[query([1, 2], 1.0, [uniform, uniform]), query([3], 1.0, [uniform])],
    )
    after = RecordScores(
        rewrite=QueryScore(1.0, True, torch.tensor([6])),
        locality=[query([1, 0], 0.5, [uniform, skewed]), query([3], 1.0, [uniform])],
    )
    row = compare_scores(RECORDS[1], before, after, tiny_llama.tokenizer)
    assert row["locality_unchanged"] == pytest.approx((0.5 + 1.0) / 2)  # not 2/3 over tokens
    assert row["locality_kl"] == pytest.approx((0.5 * math.log(4 / 3) / 2 + 0.0) / 2, abs=1e-6)
    assert row["locality_drawdown"] == pytest.approx((0.5 + 0.0) / 2)
    assert row["rewrite_acc"] == 1.0 and row["rewrite_exact"] is True and row["pre_rewrite_acc"] == 0.0


def test_probe_changes_are_what_each_probe_takes_off_locality(tiny_llama):
    """Per probe, the changed fraction of its positions; their mean is one minus the record's locality."""

    def query(accuracy, predictions):
        uniform = torch.full((len(predictions), 2), math.log(0.5))  # (tokens, vocab) log-probabilities
        return QueryScore(accuracy, accuracy == 1.0, torch.tensor(predictions), uniform)

    before = RecordScores(
        rewrite=QueryScore(0.0, False, torch.tensor([5])),
        locality=[query(1.0, [1, 2, 3, 4]), query(1.0, [3])],
    )
    after = RecordScores(
        rewrite=QueryScore(1.0, True, torch.tensor([6])),
        locality=[query(0.5, [1, 0, 3, 0]), query(1.0, [3])],
    )
    changes = probe_changes(before, after)
    assert changes == [0.5, 0.0]
    row = compare_scores(RECORDS[1], before, after, tiny_llama.tokenizer)
    assert row["locality_unchanged"] == pytest.approx(1 - sum(changes) / len(changes))


def test_evaluate_edit_keeps_each_probes_change(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    unchanged = evaluate_edit(model, model, tokenizer, RECORDS)
    assert unchanged.probe_changes == {"france": [0.0], "potter": [0.0, 0.0], "bare": []}
    after_model = edited_copy(model, NoiseEditor(scale=2.0).edit(model, tokenizer, RECORDS))
    evaluation = evaluate_edit(model, after_model, tokenizer, RECORDS)
    for row in evaluation.rows[:2]:
        changes = evaluation.probe_changes[row["record_id"]]
        assert row["locality_unchanged"] == pytest.approx(1 - sum(changes) / len(changes))


def test_aggregates_skip_missing_values():
    rows = [
        {
            "rewrite_acc": 1.0,
            "rewrite_exact": True,
            "rephrase_acc": 0.5,
            "locality_unchanged": 1.0,
            "portability_acc": None,
        },
        {
            "rewrite_acc": 0.5,
            "rewrite_exact": False,
            "rephrase_acc": None,
            "locality_unchanged": 0.5,
            "portability_acc": None,
        },
    ]
    aggregates = aggregate(rows)
    assert aggregates["records"] == 2
    assert aggregates["rewrite_acc"] == 0.75 and aggregates["rewrite_exact"] == 0.5
    assert aggregates["rephrase_acc"] == 0.5  # the row without rephrases does not count as 0
    assert aggregates["portability_acc"] is None
    assert aggregates["score"] == pytest.approx((0.75 + 0.5 + 0.75) / 3)


def test_run_single_edits_matches_separate_evaluation(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    editor = NoiseEditor()
    progress = []
    evaluation = run_single_edits(
        editor,
        model,
        tokenizer,
        RECORDS,
        batch_size=2,
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert fingerprint(model) == tiny_model.fingerprint  # every edit was undone exactly
    assert editor.calls == [["france"], ["potter"], ["bare"]]  # one record per edit
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert all(row["edit_seconds"] >= 0 for row in evaluation.rows)
    # Each row equals comparing the base model with a copy holding that record's edit alone.
    for record, row in zip(RECORDS, evaluation.rows, strict=True):
        expected = evaluate_edit(
            model, edited_copy(model, editor.edit(model, tokenizer, [record])), tokenizer, [record]
        )
        for column in (
            "rewrite_acc",
            "rephrase_acc",
            "locality_unchanged",
            "portability_acc",
            "pre_rewrite_acc",
        ):
            assert row[column] == pytest.approx(expected.rows[0][column]), column
        if row["locality_kl"] is not None:
            assert row["locality_kl"] == pytest.approx(expected.rows[0]["locality_kl"], rel=1e-4, abs=1e-7)


def test_run_batch_edit_uses_one_edit(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    editor = NoiseEditor()
    evaluation = run_batch_edit(editor, model, tokenizer, RECORDS, batch_size=2)
    assert editor.calls == [["france", "potter", "bare"]]
    assert fingerprint(model) == tiny_model.fingerprint
    expected = evaluate_edit(
        model, edited_copy(model, editor.edit(model, tokenizer, RECORDS)), tokenizer, RECORDS
    )
    assert [row["rewrite_acc"] for row in evaluation.rows] == [row["rewrite_acc"] for row in expected.rows]
    assert evaluation.aggregates["edit_seconds"] >= 0


def test_evaluation_json_round_trip(tiny_llama):
    evaluation = evaluate_edit(tiny_llama.model, tiny_llama.model, tiny_llama.tokenizer, RECORDS)
    text = json.dumps(evaluation.to_json())  # plain JSON types only
    restored = EditEvaluation.from_json(json.loads(text))
    assert restored.rows == evaluation.rows and restored.aggregates == evaluation.aggregates


def test_perplexity_is_token_weighted(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    nll_sum, count = 0.0, 0
    for text in TEXTS:
        ids = encode_texts(tokenizer, [text]).input_ids
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss  # mean NLL over this text's shifted tokens
        nll_sum += float(loss) * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    expected = math.exp(nll_sum / count)
    assert perplexity(model, tokenizer, TEXTS, batch_size=2) == pytest.approx(expected, rel=1e-4)
    assert perplexity(model, tokenizer, TEXTS, batch_size=1) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="at least one"):
        perplexity(model, tokenizer, [])


def predicted_word(model, tokenizer) -> tuple[str, str]:
    """A prompt and a one-token word the model predicts right after it (so its accuracy there is 1)."""
    prompts = ["Harry Potter was written by", "BBC One, by", "Sega makes", "The capital of Italy is"]
    for prompt in prompts:
        ids, first = encode_example(tokenizer, prompt, "x")
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([ids[:first]])).logits[0, -1].argmax())
        word = tokenizer.decode([token]).strip()
        if word:
            ids, first = encode_example(tokenizer, prompt, word)
            if ids[first:] == [token]:
                return prompt, word
    raise AssertionError("no prompt here has a whole word as its next token")


WRONG = "zebra quantum"


def alias_record(prompt: str, word: str, *, aliases: bool = True) -> EditRecord:
    """Every query's answer is wrong; ``word`` is the second alias of the target and locality's answer."""
    return EditRecord(
        "alias",
        prompt,
        WRONG,
        target_aliases=("piano keys", word) if aliases else (),
        rephrase_prompts=(prompt,),
        portability=(PromptAnswer(prompt, WRONG, "p", (word,) if aliases else ()),),
        locality=(PromptAnswer(prompt, WRONG, "l", ("piano keys", word) if aliases else ()),),
    )


def test_an_alias_makes_every_query_right(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    prompt, word = predicted_word(model, tokenizer)
    assert reference_accuracy(model, tokenizer, prompt, WRONG) < 1.0
    (scores,) = score_records(model, tokenizer, [alias_record(prompt, word)])
    (plain,) = score_records(model, tokenizer, [alias_record(prompt, word, aliases=False)])
    assert (scores.rewrite.accuracy, scores.rewrite.exact, scores.rewrite.alias) == (1.0, True, 2)
    assert (scores.rephrase[0].accuracy, scores.portability[0].alias, scores.locality[0].accuracy) == (
        1.0,
        1,
        1.0,
    )
    assert plain.rewrite.accuracy == pytest.approx(reference_accuracy(model, tokenizer, prompt, WRONG))
    assert not plain.rewrite.exact and plain.locality[0].accuracy < 1.0
    # Predictions and distributions stay those of the answer itself, whichever alias scores best, so
    # locality compares the same tokens before and after an edit.
    assert torch.equal(scores.locality[0].predictions, plain.locality[0].predictions)
    torch.testing.assert_close(scores.locality[0].log_probs, plain.locality[0].log_probs)
    row = evaluate_edit(model, model, tokenizer, [alias_record(prompt, word)]).rows[0]
    assert (
        row["rewrite_acc"] == row["rephrase_acc"] == row["portability_acc"] == row["pre_rewrite_acc"] == 1.0
    )


def test_aliases_count_before_and_after_an_edit(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    prompt, word = predicted_word(model, tokenizer)
    record = alias_record(prompt, word)
    after_model = edited_copy(model, NoiseEditor(scale=2.0).edit(model, tokenizer, [record]))
    row = evaluate_edit(model, after_model, tokenizer, [record]).rows[0]

    def best(scored_model, answers) -> float:
        return max(reference_accuracy(scored_model, tokenizer, prompt, answer) for answer in answers)

    assert row["rewrite_acc"] == pytest.approx(best(after_model, record.targets))
    (probe,) = record.locality
    assert row["locality_drawdown"] == pytest.approx(
        best(model, probe.answers) - best(after_model, probe.answers)
    )


def test_alias_sequences_share_forward_passes(tiny_llama):
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    records = [alias_record("The capital of France is", "Paris"), *RECORDS]
    # The alias record: rewrite and rephrase against 3 answers each, portability 2, locality 3; then
    # RECORDS' queries, one answer each (5, 3 and 1).
    sequences = 3 + 3 + 2 + 3 + 5 + 3 + 1
    calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda *_: calls.append(1))
    try:
        batched = score_records(model, tokenizer, records, batch_size=4)
    finally:
        handle.remove()
    assert len(calls) == math.ceil(sequences / 4)
    single = score_records(model, tokenizer, records, batch_size=1)
    assert [s.rewrite.accuracy for s in batched] == [s.rewrite.accuracy for s in single]
    assert [s.rewrite.alias for s in batched] == [s.rewrite.alias for s in single]


def test_single_edits_apply_an_edit_group_together(tiny_model):
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    first = dataclasses.replace(RECORDS[0], record_id="case-0", edit_group="case")
    second = dataclasses.replace(RECORDS[1], record_id="case-1", edit_group="case")
    records = [first, RECORDS[2], second]  # a group need not be contiguous
    editor = NoiseEditor()
    progress = []
    evaluation = run_single_edits(
        editor, model, tokenizer, records, batch_size=1, on_progress=lambda done, total: progress.append(done)
    )
    assert editor.calls == [["case-0", "case-1"], ["bare"]]  # the group is one edit, never split
    assert [row["record_id"] for row in evaluation.rows] == ["case-0", "bare", "case-1"]
    assert progress == [1, 2, 3]
    assert fingerprint(model) == tiny_model.fingerprint
    together = edited_copy(model, editor.edit(model, tokenizer, [first, second]))
    expected = evaluate_edit(model, together, tokenizer, [first, second])
    for row, expected_row in zip([evaluation.rows[0], evaluation.rows[2]], expected.rows, strict=True):
        assert row["rewrite_acc"] == pytest.approx(expected_row["rewrite_acc"])
        assert row["locality_unchanged"] == pytest.approx(expected_row["locality_unchanged"])
    assert evaluation.rows[0]["edit_seconds"] == evaluation.rows[2]["edit_seconds"]
