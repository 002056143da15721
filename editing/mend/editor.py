"""MEND edits, split into the steps of the paper's Algorithm 2.

    capture_edit_factors -> transform_factors -> compose_deltas -> (apply: editing.core.apply.EditResult)

Sign and step size (the paper and the original code disagree, eric-mitchell/mend issues 13 and 15):
we follow the paper's gradient *descent* convention, ``W_new = W - step * pseudo_grad``, with one learned
``step`` per edited weight initialised to a small positive value (as the original code's ``edit_lrs``).
With an untrained (identity) network the edit is then one SGD step on the edit loss, which lowers it;
``tests/editing/test_mend.py`` checks exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editing.core.apply import EditResult, named_parameters
from editing.core.forward import compute_prefix, scored_logits
from editing.core.hooks import Factors, capture_factors, outer_sum
from editing.core.losses import per_example_mean, token_nll
from editing.core.targets import EditScope
from editing.core.tokens import TokenBatch, encode_batch
from editing.data.records import EditRecord
from editing.mend.editor_net import MendNetwork

Prefix = tuple[str, int, torch.Tensor]


@dataclass(frozen=True)
class CapturedEdit:
    factors: dict[str, Factors]
    token_mask: torch.Tensor  # (batch, seq) bool: tokens whose logits carry loss
    loss: torch.Tensor  # scalar: summed per-example mean NLL of the targets before the edit
    gradients: dict[str, torch.Tensor]  # exact weight gradients, for diagnostics
    logits: torch.Tensor  # (scored, vocab) detached pre-edit logits of every example in the batch

    @property
    def row_example(self) -> torch.Tensor:
        """(rows,) the example each selected token row belongs to."""
        rows = torch.arange(self.token_mask.shape[0], device=self.token_mask.device)[:, None]
        return rows.expand_as(self.token_mask)[self.token_mask]


def loss_token_mask(batch: TokenBatch) -> torch.Tensor:
    """(batch, seq) bool: positions whose logits are scored, i.e. the tokens that carry loss."""
    mask = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    mask[:, :-1] = batch.prediction_mask
    return mask


def capture_edit_factors(
    model: nn.Module,
    scope: EditScope,
    batch: TokenBatch,
    prefix: Prefix | None = None,
    *,
    edit_examples: int | None = None,
) -> CapturedEdit:
    """One forward and backward pass of the edit loss, recording ``u`` and ``delta`` per edited weight.

    Each example's loss is its mean target-token NLL and the batch loss is their *sum*, so an example's
    factors are exactly those of its own loss: a batch captures independent edits in one pass. Only the
    first ``edit_examples`` examples (default: all) are edits; later ones just ride along to get their
    pre-edit logits from the same pass.
    """
    edit_examples = len(batch) if edit_examples is None else edit_examples
    parameters = named_parameters(model, scope.weight_names)
    leaves = {name: parameter.detach().requires_grad_(True) for name, parameter in parameters.items()}
    with capture_factors(model, scope.weight_names) as capture, torch.enable_grad():
        logits = scored_logits(model, batch, weights=leaves, prefix=prefix)  # (scored, vocab)
        is_edit = batch.scored_example < edit_examples  # (scored,)
        nll = token_nll(logits[is_edit], batch.scored_targets[is_edit])  # (edit scored,)
        loss = per_example_mean(nll, batch.scored_example[is_edit], edit_examples).sum()
        gradients = torch.autograd.grad(loss, list(leaves.values()))
    token_mask = loss_token_mask(batch)
    token_mask[edit_examples:] = False
    return CapturedEdit(
        capture.factors(),
        token_mask,
        loss.detach(),
        dict(zip(leaves, gradients, strict=True)),
        logits.detach(),
    )


def transform_factors(
    network: MendNetwork, captured: CapturedEdit
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per weight: (u_tilde (rows, d_in), delta_tilde (rows, d_out)) for the tokens that carry loss."""
    rows = {}
    for name, factors in captured.factors.items():
        u, delta = factors.rows(captured.token_mask)  # (rows, d_in), (rows, d_out)
        rows[name] = (u.float(), delta.float())
    return network.transform(rows)


def compose_deltas(
    network: MendNetwork,
    transformed: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rows: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``-step * sum_rows(delta_tilde u_tilde^T)`` per weight, over ``rows`` (bool mask) or all rows."""
    deltas = {}
    for name, (u_tilde, delta_tilde) in transformed.items():
        if rows is not None:
            u_tilde, delta_tilde = u_tilde[rows], delta_tilde[rows]
        pseudo_gradient = outer_sum(u_tilde, delta_tilde, network.layers[name].orientation)
        deltas[name] = -network.step_size(name) * pseudo_gradient  # same layout as the weight
    return deltas


def edited_weights(
    model: nn.Module,
    network: MendNetwork,
    transformed: dict[str, tuple[torch.Tensor, torch.Tensor]],
    rows: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``W - step * sum_rows(delta_tilde u_tilde^T)`` per weight for ``functional_call``, differentiable
    in the transformed factors and step sizes. The step scales the (few) rows before the product, and
    the product is added to ``W`` in the same pass, so no separate delta matrix is ever built."""
    parameters = named_parameters(model, list(transformed))
    weights = {}
    for name, (u_tilde, delta_tilde) in transformed.items():
        if rows is not None:
            u_tilde, delta_tilde = u_tilde[rows], delta_tilde[rows]
        weight = parameters[name]
        scaled_u = -network.step_size(name) * u_tilde  # (rows, d_in)
        weights[name] = outer_sum(
            scaled_u.to(weight.dtype),
            delta_tilde.to(weight.dtype),
            network.layers[name].orientation,
            base=weight,
        )
    return weights


class MendEditor:
    """A trained MEND network behind the ``Editor`` protocol."""

    name = "mend"

    def __init__(self, network: MendNetwork, scope: EditScope):
        self.network = network
        self.scope = scope

    @torch.no_grad()
    def _prefix(self, model: nn.Module, batch: TokenBatch) -> Prefix:
        hidden = compute_prefix(model, self.scope.blocks_path, self.scope.first_block, batch)
        return self.scope.blocks_path, self.scope.first_block, hidden

    def edit(self, model: nn.Module, tokenizer, records: Sequence[EditRecord]) -> EditResult:
        """One edit that makes every record's prompt complete with its ``target_new`` (summed over records)."""
        if not records:
            raise ValueError("no records to edit")
        device = next(model.parameters()).device
        batch = encode_batch(tokenizer, [r.prompt for r in records], [r.target_new for r in records]).to(
            device
        )
        self.network.eval()  # freezes the normalisers' statistics
        captured = capture_edit_factors(model, self.scope, batch, self._prefix(model, batch))
        with torch.no_grad():
            deltas = compose_deltas(self.network, transform_factors(self.network, captured))
        diagnostics = {"edit_loss_before": float(captured.loss) / len(records)}
        for name, delta in deltas.items():
            diagnostics[f"delta_norm/{name}"] = float(delta.norm())
        return EditResult({name: delta.detach() for name, delta in deltas.items()}, diagnostics)
