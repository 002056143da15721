"""Editor training: prefix-cache exactness, learning on a tiny model, exact resume from a checkpoint."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from editing.config import EditorConfig, TrainConfig
from editing.core.targets import resolve_scope
from editing.data.records import read_records
from editing.data.training_data import TrainingDataError, encode_training_examples
from editing.mend.editor import MendEditor
from editing.mend.editor_net import MendNetwork
from editing.training.checkpoint import load_editor, load_trainer_state, save_editor
from editing.training.objective import EditGroup, consecutive_groups
from editing.training.trainer import WARM_AHEAD_STEPS, EditorTrainer
from tests.paths import DATA_DIR
from tests.tiny import tiny_protected

COUNTERFACT_TRAIN = DATA_DIR / "counterfact_easyedit_splits/counterfact-train.json"


@pytest.fixture(scope="module")
def records():
    return read_records(COUNTERFACT_TRAIN, limit=120).records


def _trainer(loaded, records, *, aggregation: str = "least_squares", **overrides) -> EditorTrainer:
    examples = encode_training_examples(loaded.tokenizer, records)
    scope = resolve_scope(loaded.model)
    torch.manual_seed(0)
    network = MendNetwork(scope.layers, EditorConfig(init_step_size=1e-3, aggregation=aggregation))
    # float32 throughout unless a test asks: these tests compare computation paths exactly.
    settings = {"batch_size": 4, "editor_lr": 1e-3, "step_size_lr": 1e-3, "val_every": 10, "val_records": 16,
                "val_group_size": 4, "bf16_autocast": False}  # fmt: skip
    config = TrainConfig(**{**settings, **overrides})
    protected = tiny_protected(loaded) if aggregation == "least_squares" else None
    return EditorTrainer(
        loaded.model,
        loaded.tokenizer,
        scope,
        network,
        examples[16:],
        examples[:16],
        config,
        protected=protected,
    )


def _editor_gradients(
    trainer: EditorTrainer, examples, group_size: int = 1
) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.network.zero_grad(set_to_none=True)
    trainer.network.eval()  # frozen normalisers: both runs see identical statistics
    loss, _ = trainer.objective(consecutive_groups(examples, group_size))
    loss.backward()
    return float(loss.detach()), {
        n: p.grad.clone() for n, p in trainer.network.named_parameters() if p.grad is not None
    }


def test_prefix_cache_gives_the_same_loss_and_gradients(tiny_model, records):
    trainer = _trainer(tiny_model, records)
    examples = trainer.train_examples[:4]
    cached_loss, cached = _editor_gradients(trainer, examples)
    assert len(trainer.cache) > 0  # the cached path really ran
    trainer.config = trainer.config.replace(prefix_cache=False)
    plain_loss, plain = _editor_gradients(trainer, examples)
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    assert cached.keys() == plain.keys() and cached
    for name in cached:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-4, atol=1e-7)


def test_training_lowers_validation_loss_and_beats_the_untrained_editor(tiny_llama, records):
    trainer = _trainer(tiny_llama, records, max_steps=40)
    state = trainer.fit()
    untrained, best = state.validations[0], min(state.validations, key=lambda v: v["loss"])
    assert best["loss"] < untrained["loss"]
    assert best["rephrase_acc"] > untrained["rephrase_acc"]
    assert best["rewrite_acc"] > untrained["rewrite_acc"]
    assert state.stop_reason == "max_steps" and state.step == 40


def test_resume_from_checkpoint_is_exact(tiny_gpt2, records, tmp_path):
    straight = _trainer(tiny_gpt2, records, max_steps=12, val_every=6, early_stop_patience=0)
    straight.fit()

    first = _trainer(tiny_gpt2, records, max_steps=6, val_every=6, early_stop_patience=0)
    first.fit()
    scope, fingerprint = first.scope, tiny_gpt2.fingerprint
    editor = MendEditor(first.network, scope, tiny_protected(tiny_gpt2))
    save_editor(tmp_path / "ckpt", editor, base_fingerprint=fingerprint,
                model_type="gpt2", trainer=first)  # fmt: skip
    resumed = _trainer(tiny_gpt2, records, max_steps=12, val_every=6, early_stop_patience=0)
    load_trainer_state(tmp_path / "ckpt", resumed)
    resumed.state.stop_reason = ""
    resumed.fit()
    assert resumed.state.step == straight.state.step == 12
    for name, tensor in straight.network.state_dict().items():
        assert torch.equal(tensor, resumed.network.state_dict()[name]), name
    assert load_editor(tmp_path / "ckpt", base_fingerprint=fingerprint).network.step_sizes.shape == (6,)


def test_mixed_group_sizes_and_same_relation_groups_are_drawn_reproducibly(tiny_llama, records):
    trainer = _trainer(tiny_llama, records, group_sizes=(1, 2, 8), same_relation_fraction=1.0)
    steps = [trainer.sampler.groups(step) for step in range(30)]
    assert steps == [trainer.sampler.groups(step) for step in range(30)]  # a function of the step alone
    sizes = {len(group.examples) for groups in steps for group in groups}
    assert sizes == {1, 2, 8}
    for groups in steps:  # every step scores about batch_size examples, whatever the group size
        assert sum(group.scored for group in groups) == 4
    for group in (group for groups in steps for group in groups):
        # One relation, topped up with other edits only when it has too few.
        counts = Counter(example.relation for example in group.examples)
        relation, count = counts.most_common(1)[0]
        assert count == min(len(group.examples), len(trainer.sampler.by_relation[relation]))


def test_bfloat16_training_uses_its_own_copy_and_leaves_the_callers_model_alone(tiny_llama, records):
    before = {n: p.clone() for n, p in tiny_llama.model.named_parameters()}
    trainer = _trainer(tiny_llama, records, max_steps=3, bf16_autocast=True, device="cpu")
    trainer.fit()
    if trainer.bf16:  # on a CPU with native bf16 units, the frozen model is a bf16 copy
        assert trainer.model is not tiny_llama.model
        assert next(trainer.model.parameters()).dtype == torch.bfloat16
    assert all(
        torch.equal(p, before[n]) and p.dtype == torch.float32 for n, p in tiny_llama.model.named_parameters()
    )
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())


def test_training_record_without_locality_names_record_and_field(tiny_llama, records):
    broken = records[0].__class__(**{**records[0].__dict__, "locality": ()})
    with pytest.raises(TrainingDataError, match=f"record {broken.record_id}: field 'locality'"):
        encode_training_examples(tiny_llama.tokenizer, [broken])


@pytest.mark.parametrize("aggregation", ["sum", "least_squares"])
@pytest.mark.parametrize("group_size", [1, 2, 3])
def test_batched_low_rank_edits_match_functional_call_per_example(
    tiny_model, records, group_size, aggregation
):
    # 3 does not divide the 4 examples: the last group holds a single edit.
    trainer = _trainer(tiny_model, records, aggregation=aggregation)
    examples = trainer.train_examples[:4]
    batched_loss, batched = _editor_gradients(trainer, examples, group_size)
    trainer.config = trainer.config.replace(batched_edits=False)
    reference_loss, reference = _editor_gradients(trainer, examples, group_size)
    assert batched_loss == pytest.approx(reference_loss, rel=1e-5)
    for name in reference:
        torch.testing.assert_close(batched[name], reference[name], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("aggregation", ["sum", "least_squares"])
def test_composed_edits_score_each_example_under_its_groups_update(tiny_llama, records, aggregation):
    # Each example of a group sees the others' edits too, so the loss differs from single edits.
    trainer = _trainer(tiny_llama, records, aggregation=aggregation)
    with torch.no_grad():
        trainer.network.step_sizes.fill_(1.0)  # edits large enough to interact visibly
    examples = trainer.train_examples[:4]
    single_loss = _editor_gradients(trainer, examples, 1)[0]
    assert _editor_gradients(trainer, examples, 4)[0] != pytest.approx(single_loss, rel=1e-3)
    # Scoring only part of a group changes which examples count, not the update they are scored under.
    together = trainer.objective([EditGroup(tuple(examples), 4)])[1]
    first_two = trainer.objective([EditGroup(tuple(examples), 2)])[1]
    assert first_two["group_edits"] == together["group_edits"] == 4


def test_time_budget_and_early_stopping_end_training(tiny_llama, records):
    budget = _trainer(tiny_llama, records, max_steps=1000, max_minutes=1e-4).fit()
    assert budget.stop_reason == "max_minutes" and budget.step == 1

    frozen = _trainer(tiny_llama, records, max_steps=1000, val_every=1, early_stop_patience=2)
    frozen.optimizer.param_groups[0]["lr"] = frozen.optimizer.param_groups[1]["lr"] = (
        0.0  # nothing can improve
    )
    state = frozen.fit()
    # (the normalisers still learn statistics, so the first validations may differ a little)
    assert state.stop_reason == "early_stopping" and state.step == state.best_step + 2


def test_non_finite_step_is_skipped_and_leaves_the_editor_unchanged(tiny_llama, records, monkeypatch):
    trainer = _trainer(tiny_llama, records)
    before = {
        name: tensor.clone()
        for name, tensor in trainer.network.state_dict().items()
        if "normalizer" not in name
    }
    objective = trainer.objective

    def poisoned(examples, **kwargs):  # a fault double: the loss comes back NaN once
        loss, metrics = objective(examples, **kwargs)
        return loss * float("nan"), {**metrics, "loss": float("nan")}

    monkeypatch.setattr(trainer, "objective", poisoned)
    trainer.train_step()
    assert trainer.state.skipped_steps == 1
    after = trainer.network.state_dict()
    assert all(torch.equal(tensor, after[name]) for name, tensor in before.items())


def test_the_coming_steps_prefixes_are_computed_together_and_only_what_they_run(tiny_llama, records):
    trainer = _trainer(tiny_llama, records, group_sizes=(1, 4), batch_size=2)
    trainer.train_step()
    # Unscored members of a group contribute their edit prompt only.
    group = EditGroup(tuple(trainer.train_examples[:3]), 1)
    first = trainer.train_examples[0]
    assert group.sequences() == [*first.sequences(), *(e.edit[0] for e in trainer.train_examples[1:3])]
    coming = {
        tuple(ids)
        for step in range(WARM_AHEAD_STEPS)
        for g in trainer._groups_of(step)
        for ids in g.sequences()
    }
    assert len(trainer.cache) == trainer.cache.misses == len(coming)
    for _ in range(3):
        trainer.train_step()
    assert trainer.cache.misses == len(coming)  # the next steps found every prefix computed
