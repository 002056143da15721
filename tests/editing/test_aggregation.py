"""Aggregation of many edits into one update: the least-squares solve against a direct solution, its
training form (Woodbury, per group, differentiable), edit rows, and protected keys."""

from __future__ import annotations

import pytest
import torch

from editing.config import EditorConfig
from editing.core.hooks import Orientation
from editing.core.targets import resolve_scope
from editing.data.records import EditRecord
from editing.mend.aggregation import (
    Aggregation,
    ProtectedBasis,
    least_squares_update,
    prior_factor,
    solved_keys,
    sum_update,
    value_shifts,
)
from editing.mend.editor import MendEditor
from editing.mend.editor_net import MendNetwork
from editing.mend.protected import PROTECTED_FILE, ProtectedKeys, ProtectedKeysError, collect_protected_keys
from editing.mend.rows import EditRows, EditRowsError, concat_rows
from tests.tiny import CORPUS, tiny_protected

D_IN, D_OUT = 6, 4


def _second_moment(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(40, D_IN, generator=generator, dtype=torch.float64)
    return keys.T @ keys / 40


def _direct(keys, values, ridge, protect, moment) -> torch.Tensor:
    """S^T from ordinary least squares on the augmented system [U; sqrt(ridge) I; sqrt(protect) C^1/2]."""
    eigenvalues, eigenvectors = torch.linalg.eigh(moment)
    root = eigenvectors @ torch.diag(eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T
    design = torch.cat([keys, ridge**0.5 * torch.eye(D_IN, dtype=keys.dtype), protect**0.5 * root])
    targets = torch.cat([values, torch.zeros(2 * D_IN, D_OUT, dtype=values.dtype)])
    return torch.linalg.lstsq(design, targets).solution  # (d_in, d_out)


def _batch(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    rows = {"one": 1, "few": 3, "many": 20, "rank_deficient": 4}[kind]
    keys = torch.randn(rows, D_IN, generator=generator, dtype=torch.float64)
    values = torch.randn(rows, D_OUT, generator=generator, dtype=torch.float64)
    if kind == "rank_deficient":  # the same edit twice and a zero key: U^T U is singular
        keys[1], values[1] = keys[0], values[0]
        keys[3] = 0
    return keys, values


@pytest.mark.parametrize("side", ["input", "row"])
@pytest.mark.parametrize("kind", ["one", "few", "many", "rank_deficient"])
@pytest.mark.parametrize("orientation", list(Orientation))
def test_least_squares_update_matches_a_direct_solution(kind, orientation, side):
    keys, values = _batch(kind)
    moment = _second_moment()
    # The row side is taken only for batches with fewer rows than inputs ("many" stays on the input side).
    prior = prior_factor(0.3, 2.0, moment, D_IN) if side == "row" else None
    update = least_squares_update(
        keys, values, orientation, ridge=0.3, protect=2.0, second_moment=moment, prior=prior
    )
    expected = _direct(keys, values, 0.3, 2.0, moment)
    expected = expected.T if orientation is Orientation.OUT_IN else expected
    torch.testing.assert_close(update, expected, rtol=1e-8, atol=1e-10)


def test_one_edit_without_protection_moves_its_key_to_its_value_and_nothing_orthogonal():
    keys, values = _batch("one")
    update = least_squares_update(keys, values, Orientation.IN_OUT, ridge=1e-6)  # (d_in, d_out)
    torch.testing.assert_close(keys @ update, values, rtol=1e-5, atol=1e-8)
    other = torch.randn(D_IN, 1, generator=torch.Generator().manual_seed(7), dtype=keys.dtype)
    orthogonal = torch.linalg.qr(torch.cat([keys.T, other], 1)).Q[:, 1]
    # Exactly zero in exact arithmetic; the input-side normal matrix k^T k + 1e-6 I has a condition number
    # near |k|^2 / 1e-6 ~ 1e7, so float64 leaves ~1e-9 (1.04e-10 was seen with an unseeded direction).
    assert float((orthogonal @ update).abs().max()) < 1e-8


def test_protection_keeps_protected_directions_still():
    keys, values = _batch("few")
    moment = _second_moment()
    loose = least_squares_update(
        keys, values, Orientation.IN_OUT, ridge=0.1, protect=0.0, second_moment=moment
    )
    tight = least_squares_update(
        keys, values, Orientation.IN_OUT, ridge=0.1, protect=50.0, second_moment=moment
    )
    top = torch.linalg.eigh(moment).eigenvectors[:, -1]  # the most common protected direction
    assert float((top @ tight).norm()) < 0.2 * float((top @ loose).norm())


@pytest.mark.parametrize("kind", ["one", "few", "rank_deficient"])
def test_training_form_equals_the_input_side_solve_and_ignores_padding(kind):
    keys, values = _batch(kind)
    moment = _second_moment()
    basis = ProtectedBasis(*reversed(torch.linalg.eigh(moment)))
    basis = ProtectedBasis(basis.eigenvectors.double(), basis.eigenvalues.double())
    padded = torch.cat([keys, torch.zeros(2, D_IN, dtype=keys.dtype)])[None]  # (1 group, rows + 2, d_in)
    left = solved_keys(
        padded, torch.tensor(0.3, dtype=keys.dtype), torch.tensor(2.0, dtype=keys.dtype), basis
    )
    assert torch.count_nonzero(left[0, -2:]) == 0
    expected = least_squares_update(
        keys, values, Orientation.IN_OUT, ridge=0.3, protect=2.0, second_moment=moment
    )
    torch.testing.assert_close(left[0, : len(keys)].T @ values, expected, rtol=1e-8, atol=1e-10)


def test_training_form_is_differentiable_in_ridge_and_protection():
    keys, _ = _batch("few")
    moment = _second_moment()
    basis = ProtectedBasis(torch.linalg.eigh(moment).eigenvectors, torch.linalg.eigh(moment).eigenvalues)
    ridge = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    protect = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, p: solved_keys(keys[None], r, p, basis), (ridge, protect))


def test_value_shift_is_what_a_rows_rank_one_update_does_at_its_own_key():
    keys, values = _batch("few")
    pseudo_keys = torch.randn_like(keys)
    shifts = value_shifts(keys, pseudo_keys, values)
    for row in range(len(keys)):
        single = sum_update(pseudo_keys[row : row + 1], values[row : row + 1], Orientation.IN_OUT)
        torch.testing.assert_close(keys[row] @ single, shifts[row])


RECORDS = [
    EditRecord("a", "The capital of France is", "Rome"),
    EditRecord("b", "Harry Potter was written by", "Tokyo"),
    EditRecord("c", "The mother tongue of Danielle Darrieux is", "English"),
]


def _ls_editor(loaded, solve_keys: str = "inputs") -> MendEditor:
    scope = resolve_scope(loaded.model)
    torch.manual_seed(0)
    network = MendNetwork(scope.layers, EditorConfig(init_step_size=1e-2, solve_keys=solve_keys)).eval()
    with torch.no_grad():  # a non-trivial network, so rows differ from raw factors
        for parameter in network.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return MendEditor(network, scope, tiny_protected(loaded))


@pytest.mark.parametrize("solve_keys", ["inputs", "network"])
def test_rows_computed_night_by_night_give_the_same_update_as_all_at_once(tiny_model, tmp_path, solve_keys):
    editor = _ls_editor(tiny_model, solve_keys)
    model, tokenizer = tiny_model.model, tiny_model.tokenizer
    at_once = editor.edit(model, tokenizer, RECORDS)
    first = editor.edit_rows(model, tokenizer, RECORDS[:2], chunk_size=1)
    second = EditRows.load(
        editor.edit_rows(model, tokenizer, RECORDS[2:]).save(tmp_path / "night2.safetensors")
    )
    ledger = editor.aggregate(concat_rows([first, second]))
    for name, delta in at_once.deltas.items():
        torch.testing.assert_close(ledger.deltas[name], delta, rtol=1e-5, atol=1e-7)
    # Dropping a record (a rollback) is a re-solve over the rest, identical to never having edited it.
    without_b = editor.aggregate(concat_rows([first, second]).select(["a", "c"]))
    expected = editor.edit(model, tokenizer, [RECORDS[0], RECORDS[2]])
    for name, delta in expected.deltas.items():
        torch.testing.assert_close(without_b.deltas[name], delta, rtol=1e-5, atol=1e-7)


def test_sum_and_least_squares_differ_and_either_can_be_chosen_at_edit_time(tiny_llama):
    editor = _ls_editor(tiny_llama)
    rows = editor.edit_rows(tiny_llama.model, tiny_llama.tokenizer, RECORDS)
    summed = editor.aggregate(rows, aggregation=Aggregation.SUM)
    solved = editor.aggregate(rows)
    assert any(not torch.allclose(summed.deltas[n], solved.deltas[n]) for n in solved.deltas)


def test_rows_refuse_unknown_records_and_duplicates(tiny_llama):
    rows = _ls_editor(tiny_llama).edit_rows(tiny_llama.model, tiny_llama.tokenizer, RECORDS)
    with pytest.raises(EditRowsError, match="no rows for record"):
        rows.select(["zzz"])
    with pytest.raises(EditRowsError, match="duplicates"):
        concat_rows([rows, rows])


def test_protected_moments_are_the_mean_outer_product_of_layer_inputs(tiny_llama, tmp_path):
    scope = resolve_scope(tiny_llama.model)
    name = scope.weight_names[0]
    protected = collect_protected_keys(
        tiny_llama.model, tiny_llama.tokenizer, scope, tiny_llama.fingerprint, texts=CORPUS[:3], facts=[]
    )
    captured = []
    module = tiny_llama.model.get_submodule(scope.layers[0].module_name)
    handle = module.register_forward_pre_hook(lambda _m, args: captured.append(args[0][0]))
    with torch.no_grad():
        for text in CORPUS[:3]:
            tiny_llama.model(**tiny_llama.tokenizer(text, return_tensors="pt"))
    handle.remove()
    keys = torch.cat(captured).double()
    expected = keys.T @ keys / len(keys)
    # The keys are float32 activations, here of one text at a time and there of a padded batch, whose
    # kernels round differently (2.8e-8 on an entry of 1e-3 seen on an AMD EPYC): the bound is float32's
    # relative precision on the matrix's scale, not on each entry.
    torch.testing.assert_close(
        protected.second_moments[name], expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max())
    )
    assert protected.info["text_tokens"] == len(keys) and protected.info["facts_right"] == 0

    path = protected.save(tmp_path)
    assert path.name == PROTECTED_FILE
    again = ProtectedKeys.load(tmp_path, base_fingerprint=tiny_llama.fingerprint)
    assert torch.equal(again.second_moments[name], protected.second_moments[name])
    with pytest.raises(ProtectedKeysError, match="protected keys of base model"):
        ProtectedKeys.load(tmp_path, base_fingerprint="0" * 64)


def test_with_network_keys_one_row_is_the_papers_rank_one_update():
    # Keys = the network's u_tilde, values = that row's own rank-1 shift at its key: with no ridge and no
    # protection, the solve gives back exactly the paper's update for a single row.
    generator = torch.Generator().manual_seed(3)
    u_tilde = torch.randn(1, D_IN, generator=generator, dtype=torch.float64)
    delta_tilde = torch.randn(1, D_OUT, generator=generator, dtype=torch.float64)
    pseudo_keys = -0.01 * u_tilde
    shifts = value_shifts(u_tilde, pseudo_keys, delta_tilde)
    # (the ridge only keeps the rank-one normal matrix solvable: it scales the result by 1 - ~2e-7)
    solved = least_squares_update(u_tilde, shifts, Orientation.OUT_IN, ridge=1e-6)
    expected = sum_update(pseudo_keys, delta_tilde, Orientation.OUT_IN)
    torch.testing.assert_close(solved, expected, rtol=1e-6, atol=1e-12)


def test_an_editor_factorises_each_weights_prior_once(tiny_llama):
    editor = _ls_editor(tiny_llama)
    name = editor.scope.weight_names[0]
    first = editor.solver(name)
    assert first is editor.solver(name) and first.prior is not None
    moment = tiny_protected(tiny_llama).second_moments[name]
    expected = prior_factor(first.ridge, first.protect, moment, moment.shape[0])
    torch.testing.assert_close(first.prior, expected)


def test_edit_time_multipliers_scale_the_learned_solver_and_protection_quietens_protected_keys(tiny_llama):
    editor = _ls_editor(tiny_llama)
    name = editor.scope.weight_names[0]
    protected = editor.with_multipliers(protect=1e4)
    assert protected.network is editor.network and protected.solver(name).protect == pytest.approx(
        1e4 * editor.solver(name).protect
    )
    assert editor.with_multipliers(ridge=3.0).solver(name).ridge == pytest.approx(
        3 * editor.solver(name).ridge
    )
    rows = editor.edit_rows(tiny_llama.model, tiny_llama.tokenizer, RECORDS)
    moment = tiny_protected(tiny_llama).second_moments[name].double()

    def energy_on_protected(result) -> float:  # E_p ||S k_p||^2 = trace(S C S^T)
        update = result.deltas[name].double()
        update = update if update.shape[1] == moment.shape[0] else update.transpose(0, 1)
        return float(torch.trace(update @ moment @ update.transpose(0, 1)))

    assert energy_on_protected(protected.aggregate(rows)) < 0.5 * energy_on_protected(editor.aggregate(rows))
    with pytest.raises(ValueError, match="multipliers"):
        editor.with_multipliers(ridge=0.0)
