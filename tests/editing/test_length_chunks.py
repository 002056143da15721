"""Sequences of similar length run together: the plan is a partition no costlier than one padded batch,
and every pass that uses it (prefix cache, the training objective's post-edit pass) gives what one padded
batch gives."""

from __future__ import annotations

import random

import pytest
import torch

import editing.core.forward
import editing.core.prefix
from editing.core.forward import compute_prefix, scored_hidden, scored_hidden_by_length
from editing.core.prefix import PrefixCache
from editing.core.targets import resolve_scope
from editing.core.tokens import encode_batch, length_chunks, pad_token_id
from editing.data.records import read_records
from tests.editing.test_trainer import COUNTERFACT_TRAIN, _editor_gradients, _trainer

ONE_BATCH, EVERY_LENGTH_APART = 10**9, 0  # call costs that force one padded batch / no padding at all


def _planned_cost(lengths, chunks, call_cost):
    return sum(call_cost + len(chunk) * max(lengths[row] for row in chunk) for chunk in chunks)


@pytest.mark.parametrize("call_cost", [0, 5, 48, 10**6])
def test_chunks_partition_the_rows_and_never_cost_more_than_one_padded_batch(call_cost):
    lengths = [random.Random(seed).randint(3, 60) for seed in range(90)]
    chunks = length_chunks(lengths, call_cost)
    assert sorted(row for chunk in chunks for row in chunk) == list(range(len(lengths)))
    one_batch = call_cost + len(lengths) * max(lengths)
    assert _planned_cost(lengths, chunks, call_cost) <= one_batch
    if call_cost == 10**6:
        assert len(chunks) == 1
    if call_cost == 0:  # nothing to gain from mixing lengths: every chunk holds one length
        assert all(len({lengths[row] for row in chunk}) == 1 for chunk in chunks)


def test_chunks_respect_the_row_limit_and_refuse_bad_settings():
    chunks = length_chunks([7] * 10, call_cost=10**6, max_rows=4)
    assert sorted(row for chunk in chunks for row in chunk) == list(range(10))
    assert len(chunks) == 3 and max(len(chunk) for chunk in chunks) <= 4
    assert length_chunks([], call_cost=1) == []
    with pytest.raises(ValueError, match="call_cost"):
        length_chunks([3], call_cost=-1)


@pytest.fixture
def mixed_lengths(tiny_llama):
    """Prompts from a few tokens to a paragraph, so that chunking really splits the batch."""
    records = read_records(COUNTERFACT_TRAIN, limit=12).records
    prompts = [r.prompt for r in records[:6]] + [" ".join(r.rephrase_prompts[0] for r in records[:6])]
    prompts += [r.rephrase_prompts[0] for r in records[6:9]]
    targets = [r.target_new for r in records[:10]]
    return encode_batch(tiny_llama.tokenizer, prompts, targets)


def test_prefix_cache_filled_by_length_matches_each_sequence_alone(tiny_llama, mixed_lengths, monkeypatch):
    model, scope = tiny_llama.model, resolve_scope(tiny_llama.model)
    monkeypatch.setattr(editing.core.prefix, "call_cost_tokens", lambda _device: EVERY_LENGTH_APART)
    cache = PrefixCache(model, scope.blocks_path, scope.first_block, pad_token_id(tiny_llama.tokenizer))
    _, _, hidden = cache.prefix(mixed_lengths)
    for row in range(len(mixed_lengths)):
        alone = mixed_lengths.select([row])
        expected = compute_prefix(model, scope.blocks_path, scope.first_block, alone)[0]
        torch.testing.assert_close(hidden[row, : expected.shape[0]], expected, rtol=1e-5, atol=1e-6)
    assert cache.misses == len(mixed_lengths)


def test_scored_hidden_by_length_keeps_the_padded_batchs_order(tiny_llama, mixed_lengths):
    model, pad_id = tiny_llama.model, pad_token_id(tiny_llama.tokenizer)
    sequences = [
        (mixed_lengths.input_ids[row, :length].tolist(), int(first))
        for row, (length, first) in enumerate(
            zip(
                mixed_lengths.attention_mask.sum(dim=1),
                (mixed_lengths.labels != -100).int().argmax(dim=1),
                strict=True,
            )
        )
    ]
    hidden, targets, owners = scored_hidden_by_length(model, sequences, pad_id, call_cost=EVERY_LENGTH_APART)
    torch.testing.assert_close(hidden, scored_hidden(model, mixed_lengths), rtol=1e-4, atol=1e-5)
    assert torch.equal(targets, mixed_lengths.scored_targets)
    assert torch.equal(owners, mixed_lengths.scored_example)


@pytest.mark.parametrize("group_size", [1, 3])
def test_training_objective_by_length_equals_one_padded_batch(tiny_llama, group_size, monkeypatch):
    records = read_records(COUNTERFACT_TRAIN, limit=40).records
    trainer = _trainer(tiny_llama, records)
    examples = trainer.train_examples[:6]
    # Every length apart, so that the tiny model's short prompts really split into sub-batches.
    monkeypatch.setattr(editing.core.forward, "call_cost_tokens", lambda _device: EVERY_LENGTH_APART)
    chunked_loss, chunked = _editor_gradients(trainer, examples, group_size)
    trainer.config = trainer.config.replace(length_chunking=False)
    whole_loss, whole = _editor_gradients(trainer, examples, group_size)
    assert chunked_loss == pytest.approx(whole_loss, rel=1e-5)
    assert whole.keys() == chunked.keys() and whole
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-4, atol=1e-7)
