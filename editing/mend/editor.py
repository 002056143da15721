"""MEND edits, split into the steps of the paper's Algorithm 2.

    capture_edit_factors -> transform_factors -> rows (editing.mend.rows) -> aggregate
    (editing.mend.aggregation: sum or least squares) -> (apply: editing.core.apply.EditResult)

Sign and step size (the paper and the original code disagree, eric-mitchell/mend issues 13 and 15):
we follow the paper's gradient *descent* convention, ``W_new = W - step * pseudo_grad``, with one learned
``step`` per edited weight initialised to a small positive value (as the original code's ``edit_lrs``).
With an untrained (identity) network the edit is then one SGD step on the edit loss, which lowers it;
``tests/editing/test_mend.py`` checks exactly that.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from editing.core.apply import EditResult, named_parameters
from editing.core.forward import compute_prefix, scored_logits
from editing.core.hooks import Factors, capture_factors
from editing.core.losses import per_example_mean, token_nll
from editing.core.targets import EditScope
from editing.core.tokens import TokenBatch, encode_batch
from editing.data.records import EditRecord
from editing.mend.aggregation import (
    Aggregation,
    SolverSettings,
    aggregate_update,
    output_energy,
    prior_factor,
)
from editing.mend.editor_net import MendNetwork
from editing.mend.neighbours import NeighbourBank, NeighbourSettings, neighbour_rows
from editing.mend.protected import ProtectedKeys
from editing.mend.rows import EditRows, concat_rows
from editing.mend.substitutes import SubjectPool

LOGGER = logging.getLogger(__name__)
Prefix = tuple[str, int, torch.Tensor]
DISTURBANCE = "disturbance/"  # diagnostics key prefix: an update's share of a weight's protected energy


def disturbances(diagnostics: dict[str, float]) -> dict[str, float]:
    """Per edited weight, the disturbance an aggregate reported (empty unless a cap, even ``inf``, was set)."""
    return {
        key.removeprefix(DISTURBANCE): value
        for key, value in diagnostics.items()
        if key.startswith(DISTURBANCE)
    }


@dataclass(frozen=True)
class CapturedEdit:
    factors: dict[str, Factors]
    token_mask: torch.Tensor  # (batch, seq) bool: tokens whose logits carry loss
    loss: torch.Tensor  # scalar: summed per-example mean NLL of the targets before the edit
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
    pre-edit logits from the same pass. The pass starts at the lowest edited block from ``prefix`` (the
    hidden state entering it, computed here when not given), which is the only thing that requires grad.
    """
    edit_examples = len(batch) if edit_examples is None else edit_examples
    if prefix is None:
        hidden = compute_prefix(model, scope.blocks_path, scope.first_block, batch)
        prefix = (scope.blocks_path, scope.first_block, hidden)
    blocks_path, first_block, hidden = prefix
    start = (blocks_path, first_block, hidden.detach().requires_grad_(True))
    with capture_factors(model, scope.weight_names) as capture, torch.enable_grad():
        logits = scored_logits(model, batch, prefix=start)  # (scored, vocab)
        is_edit = batch.scored_example < edit_examples  # (scored,)
        nll = token_nll(logits[is_edit], batch.scored_targets[is_edit])  # (edit scored,)
        loss = per_example_mean(nll, batch.scored_example[is_edit], edit_examples).sum()
        capture.backward(loss)
    token_mask = loss_token_mask(batch)
    token_mask[edit_examples:] = False
    return CapturedEdit(capture.factors(), token_mask, loss.detach(), logits.detach())


def transform_factors(
    network: MendNetwork, captured: CapturedEdit
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per weight: (u_tilde (rows, d_in), delta_tilde (rows, d_out)) for the tokens that carry loss."""
    rows = {}
    for name, factors in captured.factors.items():
        u, delta = factors.rows(captured.token_mask)  # (rows, d_in), (rows, d_out)
        rows[name] = (u.float(), delta.float())
    return network.transform(rows)


def key_rows(
    network: MendNetwork, captured: CapturedEdit, transformed: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Per weight, (rows, d_in) the keys a least-squares solve maps to value shifts: the layer inputs
    ``u`` at the tokens that carry loss, or the network's ``u_tilde`` (``EditorConfig.solve_keys``)."""
    if network.config.solve_keys == "network":
        return {name: u_tilde for name, (u_tilde, _) in transformed.items()}
    return {name: factors.u[captured.token_mask].float() for name, factors in captured.factors.items()}


class MendEditor:
    """A trained MEND network behind the ``Editor`` protocol.

    ``edit`` = ``aggregate(edit_rows(...))``: rows are what each edit asks of each weight, computed on the
    model given (the base model, for a ledger); aggregation turns any set of rows into one update.
    Least-squares aggregation needs the base model's protected keys (``editing.mend.protected``).
    """

    name = "mend"

    def __init__(
        self,
        network: MendNetwork,
        scope: EditScope,
        protected: ProtectedKeys | None = None,
        *,
        ridge_multiplier: float = 1.0,
        protect_multiplier: float = 1.0,
        neighbours: tuple[NeighbourBank | None, NeighbourSettings, SubjectPool | None] | None = None,
        disturbance_cap: tuple[float, dict[str, float]] | None = None,
    ):
        if network.config.aggregation == Aggregation.LEAST_SQUARES and protected is None:
            raise ValueError("a least-squares MEND editor needs the base model's protected keys")
        if ridge_multiplier <= 0 or protect_multiplier < 0:
            raise ValueError(
                f"solver multipliers: ridge must be > 0 and protection >= 0, got {ridge_multiplier}, "
                f"{protect_multiplier}"
            )
        self.network, self.scope, self.protected = network, scope, protected
        # Edit-time scaling of the learned ridge and protection weights (1 = as trained): more of either
        # trades edit strength for locality in a large batch, where training saw at most its largest group.
        self.ridge_multiplier, self.protect_multiplier = ridge_multiplier, protect_multiplier
        # Each edit's nearest known facts, held in place by the solve (editing.mend.neighbours).
        self.neighbours = neighbours
        # The most an update may move the protected keys' outputs, as a share of each weight's own output
        # energy over them (``with_disturbance_cap``), and those energies.
        self.disturbance_cap = disturbance_cap
        # Per weight, the solver settings with the factorised prior: they depend only on the (frozen)
        # network and the protected keys, so they are computed on first use and kept.
        self._solvers: dict[str, SolverSettings] = {}

    def _replace(self, **changes) -> MendEditor:
        settings = {"ridge_multiplier": self.ridge_multiplier, "protect_multiplier": self.protect_multiplier,
                    "neighbours": self.neighbours, "disturbance_cap": self.disturbance_cap, **changes}  # fmt: skip
        return MendEditor(self.network, self.scope, self.protected, **settings)

    def with_multipliers(self, *, ridge: float = 1.0, protect: float = 1.0) -> MendEditor:
        """The same trained network with the learned ridge and protection scaled at edit time."""
        return self._replace(ridge_multiplier=ridge, protect_multiplier=protect)

    def with_neighbours(
        self, bank: NeighbourBank | None, settings: NeighbourSettings, subjects: SubjectPool | None = None
    ) -> MendEditor:
        """The same editor, protecting each edit's ``settings.per_edit`` nearest facts of ``bank`` and its
        ``settings.substitutes`` same-wording neighbours about subjects of ``subjects``."""
        if self.aggregation is not Aggregation.LEAST_SQUARES and settings.enabled:
            raise ValueError("neighbour protection needs least-squares aggregation")
        return self._replace(neighbours=(bank, settings, subjects))

    def with_disturbance_cap(self, max_disturbance: float | None, model: nn.Module) -> MendEditor:
        """The same editor, each least-squares update bounded to move the protected keys' outputs by at
        most ``max_disturbance`` of their own energy: ``E_p ||S k_p||^2 <= cap * E_p ||W k_p||^2`` per
        weight, ``W`` from ``model`` (the base model the edits apply to). None lifts the bound; ``inf``
        bounds nothing but reports each update's disturbance in its diagnostics.

        Training sees groups of a few dozen edits; the bound keeps a batch or ledger far beyond them from
        buying its edits with the model's general behaviour (``editing.mend.aggregation._capped``)."""
        if max_disturbance is None:
            return self._replace(disturbance_cap=None)
        if self.aggregation is not Aggregation.LEAST_SQUARES:
            raise ValueError("a disturbance cap needs least-squares aggregation")
        if not max_disturbance > 0:
            raise ValueError(f"the disturbance cap must be positive, got {max_disturbance}")
        weights = named_parameters(model, list(self.network.layers))
        energies = {
            name: output_energy(
                weights[name], self.protected.second_moments[name], self.network.layers[name].orientation
            )
            for name in self.network.layers
        }  # fmt: skip
        return self._replace(disturbance_cap=(max_disturbance, energies))

    @property
    def aggregation(self) -> Aggregation:
        return Aggregation(self.network.config.aggregation)

    @torch.no_grad()
    def _prefix(self, model: nn.Module, batch: TokenBatch) -> Prefix:
        hidden = compute_prefix(model, self.scope.blocks_path, self.scope.first_block, batch)
        return self.scope.blocks_path, self.scope.first_block, hidden

    def edit_rows(
        self, model: nn.Module, tokenizer, records: Sequence[EditRecord], *, chunk_size: int = 32
    ) -> EditRows:
        """Every record's rows, ``chunk_size`` records per pass. The normalisers are frozen when editing,
        so a record's rows do not depend on what it is batched with."""
        if not records:
            raise ValueError("no records to edit")
        device = next(model.parameters()).device
        self.network.eval()
        parts, losses = [], []
        for start in range(0, len(records), chunk_size):
            chunk = records[start : start + chunk_size]
            batch = encode_batch(tokenizer, [r.prompt for r in chunk], [r.target_new for r in chunk]).to(
                device
            )
            captured = capture_edit_factors(model, self.scope, batch, self._prefix(model, batch))
            with torch.no_grad():
                transformed = transform_factors(self.network, captured)
            keys = key_rows(self.network, captured, transformed)
            parts.append(
                EditRows(
                    keys,
                    {
                        n: -self.network.step_size(n).detach() * u_tilde
                        for n, (u_tilde, _) in transformed.items()
                    },
                    {n: delta_tilde for n, (_, delta_tilde) in transformed.items()},
                    captured.row_example.cpu(),
                    tuple(r.record_id for r in chunk),
                )
            )
            losses.append(float(captured.loss))
        rows = concat_rows(parts)
        LOGGER.info("%d edit(s): %d rows, mean edit loss before %.3f", len(records), rows.row_record.shape[0],
                    sum(losses) / len(records))  # fmt: skip
        return self._with_neighbour_rows(rows, model, tokenizer, records)

    def _with_neighbour_rows(self, rows: EditRows, model: nn.Module, tokenizer, records) -> EditRows:
        """``rows`` plus each record's zero-shift neighbour rows, when neighbour protection is on."""
        if self.neighbours is None or not self.neighbours[1].enabled:
            return rows
        bank, settings, subjects = self.neighbours
        protect = {name: self.solver(name).protect for name in rows.weight_names}
        keys, owners = neighbour_rows(
            bank, model, tokenizer, records, settings, protect, subjects=subjects, scope=self.scope
        )
        if not len(owners):
            return rows
        zeros = {
            name: torch.zeros(len(owners), rows.pseudo_values[name].shape[1]) for name in rows.weight_names
        }
        return EditRows(
            {name: torch.cat([rows.keys[name], keys[name].to(rows.keys[name])]) for name in rows.weight_names},
            {name: torch.cat([rows.pseudo_keys[name], torch.zeros_like(keys[name]).to(rows.keys[name])])
             for name in rows.weight_names},
            {name: torch.cat([rows.pseudo_values[name], zeros[name].to(rows.pseudo_values[name])])
             for name in rows.weight_names},
            torch.cat([rows.row_record, owners]),
            rows.record_ids,
        )  # fmt: skip

    def solver(self, name: str) -> SolverSettings:
        """The least-squares settings of one edited weight: learned weights, protected moment, prior."""
        if name not in self._solvers:
            ridge_scale, protect = (weight.detach() for weight in self.network.solver_weights(name))
            moment = self.protected.second_moments[name]
            ridge = float(ridge_scale) * self.ridge_multiplier * self.protected.mean_eigenvalue(name)
            protect = float(protect) * self.protect_multiplier
            prior = prior_factor(ridge, protect, moment, moment.shape[0])
            self._solvers[name] = SolverSettings(ridge, protect, moment, prior, self._max_energy(name))
        return self._solvers[name]

    def _max_energy(self, name: str) -> float | None:
        if self.disturbance_cap is None or self.disturbance_cap[0] == float("inf"):
            return None
        share, energies = self.disturbance_cap
        return share * energies[name]

    @torch.no_grad()
    def aggregate(self, rows: EditRows, *, aggregation: Aggregation | None = None) -> EditResult:
        """One update per edited weight from ``rows`` (by the editor's own aggregation unless given)."""
        aggregation = Aggregation(aggregation or self.aggregation)
        deltas, diagnostics = {}, {"rows": float(rows.row_record.shape[0]), "edits": float(len(rows))}
        for name in rows.weight_names:
            solver = self.solver(name) if aggregation is Aggregation.LEAST_SQUARES else None
            deltas[name] = aggregate_update(
                aggregation, rows.keys[name], rows.pseudo_keys[name], rows.pseudo_values[name],
                self.network.layers[name].orientation, solver,
            )  # fmt: skip
            diagnostics[f"delta_norm/{name}"] = float(deltas[name].norm())
            if self.disturbance_cap is not None:  # the update's share of the weight's protected energy
                energy = output_energy(deltas[name], self.protected.second_moments[name],
                                       self.network.layers[name].orientation)  # fmt: skip
                diagnostics[f"{DISTURBANCE}{name}"] = energy / self.disturbance_cap[1][name]
        return EditResult(deltas, diagnostics)

    def edit(self, model: nn.Module, tokenizer, records: Sequence[EditRecord]) -> EditResult:
        """One edit that makes every record's prompt complete with its ``target_new``."""
        device = next(model.parameters()).device
        return self.aggregate(self.edit_rows(model, tokenizer, records)).to(device)
