"""General text in editor training: a second locality term over ordinary text, kept off by default."""

from __future__ import annotations

import pytest
import torch

from editing.config import EditorConfig, TrainConfig
from editing.core.targets import resolve_scope
from editing.data.records import read_records, read_texts
from editing.data.training_data import TrainingDataError, encode_training_examples, with_general_texts
from editing.mend.editor_net import MendNetwork
from editing.training.objective import consecutive_groups
from editing.training.run import train_editor
from editing.training.trainer import EditorTrainer
from tests.paths import DATA_DIR
from tests.tiny import tiny_protected

COUNTERFACT_TRAIN = DATA_DIR / "counterfact_easyedit_splits/counterfact-train.json"
GENERAL_TEXTS = DATA_DIR / "me_ppl/ME-PPL.json"


@pytest.fixture(scope="module")
def records():
    return read_records(COUNTERFACT_TRAIN, limit=24).records


@pytest.fixture(scope="module")
def texts():
    return read_texts(GENERAL_TEXTS, limit=6)


def _trainer(loaded, examples, *, aggregation: str = "sum", **overrides) -> EditorTrainer:
    # The sum by default: least squares protects general text so well that the term's plumbing, which
    # these tests check, would hardly show.
    scope = resolve_scope(loaded.model)
    torch.manual_seed(0)
    network = MendNetwork(scope.layers, EditorConfig(init_step_size=1e-3, aggregation=aggregation))
    config = TrainConfig(**{"batch_size": 4, "val_records": 4, **overrides})
    return EditorTrainer(
        loaded.model, loaded.tokenizer, scope, network, examples[4:], examples[:4], config,
        protected=tiny_protected(loaded) if aggregation == "least_squares" else None,
    )  # fmt: skip


def _loss(trainer: EditorTrainer, examples, *, step_size: float | None = None, group_size: int = 1):
    trainer.network.eval()
    if step_size is not None:
        with torch.no_grad():
            trainer.network.step_sizes.fill_(step_size)
    with torch.no_grad():
        loss, metrics = trainer.objective(consecutive_groups(examples, group_size))
    return float(loss), metrics


def test_general_texts_are_paired_round_robin_and_scored_at_the_end(tiny_llama, records, texts):
    plain = encode_training_examples(tiny_llama.tokenizer, records[:8])
    paired = with_general_texts(tiny_llama.tokenizer, plain, texts[:3], max_tokens=12, scored_tokens=5)
    assert [example.general for example in paired[3:6]] == [example.general for example in paired[:3]]
    assert len({tuple(example.general[0]) for example in paired[:3]}) == 3
    ids, first_scored = paired[0].general
    assert len(ids) <= 12 and first_scored == max(1, len(ids) - 5)
    assert paired[0].sequences()[-1] == ids and plain[0].general is None


def test_unusable_general_texts_are_an_error_not_skipped(tiny_llama, records):
    plain = encode_training_examples(tiny_llama.tokenizer, records[:2])
    with pytest.raises(TrainingDataError, match="no general texts"):
        with_general_texts(tiny_llama.tokenizer, plain, [])
    with pytest.raises(TrainingDataError, match="fewer than two tokens"):
        with_general_texts(tiny_llama.tokenizer, plain, [""])


def test_general_text_leaves_the_other_terms_alone_and_is_zero_without_an_edit(tiny_llama, records, texts):
    plain = encode_training_examples(tiny_llama.tokenizer, records)
    paired = with_general_texts(tiny_llama.tokenizer, plain, texts)
    # Weight 0: adding general sequences to the passes must not shift the locality term's alignment.
    without, _ = _loss(_trainer(tiny_llama, plain), plain[:4], step_size=1.0)
    ignored, _ = _loss(_trainer(tiny_llama, paired), paired[:4], step_size=1.0)
    assert ignored == pytest.approx(without, rel=1e-5)
    # An edit of zero changes nothing, so pre and post distributions line up exactly.
    _, unedited = _loss(_trainer(tiny_llama, paired, general_text_loss_weight=1.0), paired[:4], step_size=0.0)
    assert unedited["general_kl"] == pytest.approx(0.0, abs=1e-8)
    trainer = _trainer(tiny_llama, paired, general_text_loss_weight=1.0)
    weighted, edited = _loss(trainer, paired[:4], step_size=1.0)
    assert edited["general_kl"] > 1e-6
    assert weighted == pytest.approx(without + edited["general_kl"], rel=1e-5)


@pytest.mark.parametrize("aggregation", ["sum", "least_squares"])
@pytest.mark.parametrize("group_size", [1, 2])
def test_batched_and_per_example_paths_agree_with_general_text(
    tiny_llama, records, texts, group_size, aggregation
):
    paired = with_general_texts(
        tiny_llama.tokenizer, encode_training_examples(tiny_llama.tokenizer, records), texts
    )
    trainer = _trainer(tiny_llama, paired, general_text_loss_weight=1.0, aggregation=aggregation)
    batched, _ = _loss(trainer, paired[:4], step_size=1.0, group_size=group_size)
    trainer.config = trainer.config.replace(batched_edits=False)
    reference, _ = _loss(trainer, paired[:4], group_size=group_size)
    assert batched == pytest.approx(reference, rel=1e-5)


def test_a_general_text_weight_without_texts_is_refused(tiny_llama, records, tmp_path):
    config = TrainConfig(max_steps=1, general_text_loss_weight=1.0, device="cpu")
    with pytest.raises(ValueError, match="needs general_texts"):
        train_editor(tiny_llama, records[4:], records[:4], tmp_path, train_config=config)
