"""The MEND editor network (Mitchell et al. 2022, section 3 and appendix C).

For every distinct edited-weight shape there is one ``FactorTransform``, shared by all edited layers of
that shape, with a per-layer learned scale and shift. It maps the gradient factors ``(u, delta)`` of a
token to ``(u_tilde, delta_tilde)``:

    z = concat(normalise(u), normalise(delta))                         # (rows, d_in + d_out)
    z = z + up(act(scale[layer] * down(z) + shift[layer]))   (per block)  # residual, low rank

``up`` starts at zero, so an untrained network is the identity; the normalisers start as the identity
too (mean 0, variance 1) and collect running statistics of the factors during training only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from editing.config import EditorConfig
from editing.core.hooks import LayerInfo

# (count, mean (dim,), sum of squared deviations (dim,)) of a batch -> the same for the merged batch.
BatchMerge = Callable[[float, torch.Tensor, torch.Tensor], tuple[float, torch.Tensor, torch.Tensor]]
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class RunningNormalizer(nn.Module):
    """Standardises features with running mean/variance (Chan et al. parallel update), kept in buffers."""

    def __init__(self, dim: int, eps: float = 1e-7):
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer(
            "sum_squares", torch.zeros(dim, dtype=torch.float64)
        )  # sum of squared deviations
        # Set only inside ``editing.training.distributed.synchronized_statistics``: merges a batch's
        # (count, mean, sum of squared deviations) with the other processes' so every process folds in
        # the statistics of the whole global batch, as one process would.
        self.merge_batch: BatchMerge | None = None

    @torch.no_grad()
    def update(self, rows: torch.Tensor) -> None:
        """Fold a batch of rows (rows, dim) into the statistics."""
        rows = rows.detach().to(torch.float64)
        batch_count = float(rows.shape[0])
        batch_mean = rows.mean(dim=0) if rows.shape[0] else rows.new_zeros(rows.shape[1])  # (dim,)
        batch_squares = ((rows - batch_mean) ** 2).sum(dim=0)  # (dim,)
        if self.merge_batch is not None:  # before any early return: every process must take part
            batch_count, batch_mean, batch_squares = self.merge_batch(batch_count, batch_mean, batch_squares)
        if batch_count == 0:
            return
        total = self.count + batch_count
        difference = batch_mean - self.mean
        self.mean += difference * (batch_count / total)
        self.sum_squares += batch_squares + difference**2 * (self.count * batch_count / total)
        self.count.fill_(total)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if self.count < 2:  # too few samples for a variance: pass through unchanged
            return rows
        std = (self.sum_squares / (self.count - 1)).sqrt().to(rows.dtype)  # (dim,)
        return (rows - self.mean.to(rows.dtype)) / (std + self.eps)


class ResidualLowRankBlock(nn.Module):
    """``z + up(act(scale[layer] * down(z) + shift[layer]))``; identity at initialisation."""

    def __init__(self, dim: int, rank: int, num_layers: int, activation: str):
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim, bias=False)
        nn.init.zeros_(self.up.weight)
        self.scale = nn.Parameter(torch.ones(num_layers, rank))
        self.shift = nn.Parameter(torch.zeros(num_layers, rank))
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, rows: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
        """rows: (rows, dim), layer: (rows,) index of the edited weight each row belongs to."""
        hidden = self.down(rows) * self.scale[layer] + self.shift[layer]  # (rows, rank)
        return rows + self.up(self.activation(hidden))  # (rows, dim)


class FactorTransform(nn.Module):
    """Transforms the factors of every edited weight of one shape ``(d_in, d_out)``."""

    def __init__(self, d_in: int, d_out: int, num_layers: int, config: EditorConfig):
        super().__init__()
        self.d_in, self.d_out, self.transform = d_in, d_out, config.transform
        self.u_normalizer = RunningNormalizer(d_in) if config.normalize else None
        self.delta_normalizer = RunningNormalizer(d_out) if config.normalize else None
        dim = {"both": d_in + d_out, "u_only": d_in, "delta_only": d_out}[config.transform]
        rank = config.rank_for(dim)
        self.blocks = nn.ModuleList(
            ResidualLowRankBlock(dim, rank, num_layers, config.activation) for _ in range(config.num_blocks)
        )

    def _network(self, rows: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            rows = block(rows, layer)
        return rows

    def forward(
        self, u: torch.Tensor, delta: torch.Tensor, layer: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u: (rows, d_in), delta: (rows, d_out), layer: (rows,) -> u_tilde (rows, d_in), delta_tilde (rows, d_out).

        Rows of every edited weight sharing this transform go through in one call (fewer, larger
        matrix products); ``layer`` picks each row's learned scale and shift.
        """
        if self.training and self.u_normalizer is not None:
            self.u_normalizer.update(u)
            self.delta_normalizer.update(delta)
        if self.u_normalizer is not None:
            u, delta = self.u_normalizer(u), self.delta_normalizer(delta)
        if self.transform == "u_only":
            return self._network(u, layer), delta
        if self.transform == "delta_only":
            return u, self._network(delta, layer)
        joined = self._network(torch.cat([u, delta], dim=-1), layer)  # (rows, d_in + d_out)
        return joined[:, : self.d_in], joined[:, self.d_in :]


def shape_key(layer: LayerInfo) -> str:
    return f"{layer.d_in}x{layer.d_out}"


class MendNetwork(nn.Module):
    """All factor transforms for a model's edited weights, plus one learned step size per weight."""

    def __init__(self, layers: Sequence[LayerInfo], config: EditorConfig):
        super().__init__()
        self.config = config
        self.layers = {layer.weight_name: layer for layer in layers}
        groups: dict[str, list[str]] = {}
        for layer in layers:
            groups.setdefault(shape_key(layer) if config.share_across_layers else _safe(layer), []).append(
                layer.weight_name
            )
        # weight name -> (transform key, index of the weight within its shared transform)
        self.routing = {name: (key, names.index(name)) for key, names in groups.items() for name in names}
        self.transforms = nn.ModuleDict(
            {
                key: FactorTransform(
                    self.layers[names[0]].d_in, self.layers[names[0]].d_out, len(names), config
                )
                for key, names in groups.items()
            }
        )
        self.step_sizes = nn.Parameter(torch.full((len(layers),), config.init_step_size))
        self.weight_names = [layer.weight_name for layer in layers]
        if config.aggregation == "least_squares":
            # Logarithms, so that both stay positive and Adam moves them by ratios.
            self.log_ridge = nn.Parameter(torch.full((len(layers),), math.log(config.init_ridge)))
            self.log_protect = nn.Parameter(torch.full((len(layers),), math.log(config.init_protect)))

    def transform(
        self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per weight: (u (rows, d_in), delta (rows, d_out)) -> (u_tilde, delta_tilde).

        One call per shared transform: the rows of all its weights go through together (fewer, larger
        matrix products), each row with its own weight's scale and shift.
        """
        transformed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for key, transform in self.transforms.items():
            names = [name for name in factors if self.routing[name][0] == key]
            if not names:
                continue
            counts = [factors[name][0].shape[0] for name in names]
            device = factors[names[0]][0].device
            layer = torch.repeat_interleave(
                torch.tensor([self.routing[name][1] for name in names]), torch.tensor(counts)
            ).to(device)  # (rows,)
            u = torch.cat([factors[name][0] for name in names])  # (rows, d_in)
            delta = torch.cat([factors[name][1] for name in names])  # (rows, d_out)
            u_tilde, delta_tilde = transform(u, delta, layer)
            for name, u_part, delta_part in zip(
                names, u_tilde.split(counts), delta_tilde.split(counts), strict=True
            ):
                transformed[name] = (u_part, delta_part)
        return transformed

    def step_size(self, weight_name: str) -> torch.Tensor:
        return self.step_sizes[self.weight_names.index(weight_name)]

    def solver_weights(self, weight_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Least squares: (ridge in units of the mean protected eigenvalue, protection weight), 0-d tensors."""
        if self.config.aggregation != "least_squares":
            raise ValueError(f"an editor aggregating by {self.config.aggregation} has no solver weights")
        index = self.weight_names.index(weight_name)
        return self.log_ridge[index].exp(), self.log_protect[index].exp()

    def solver_parameters(self) -> list[nn.Parameter]:
        """The learned logarithms of ridge and protection weight (none for the sum): trained at their own
        learning rate, since they move by ratios while the network moves by small steps."""
        return [getattr(self, name) for name in ("log_ridge", "log_protect") if hasattr(self, name)]


def _safe(layer: LayerInfo) -> str:
    return layer.weight_name.replace(".", "__")
