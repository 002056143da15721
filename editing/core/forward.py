"""Forward passes that score only what is needed.

Two savings make editor training affordable on a CPU, and both are exact:

* **Frozen prefix.** Edits touch only the last few blocks, so the hidden state entering the lowest edited
  block is the same before and after an edit. ``compute_prefix`` runs the model up to that block once,
  and ``scored_logits(..., prefix=...)`` runs only the blocks from there on.
* **Scored positions only.** The vocabulary projection of a small model costs more than its last blocks,
  so logits are computed only at the positions that carry loss (``TokenBatch.prediction_mask``).

Edited weights are passed by parameter name and applied with ``torch.func.functional_call``; the model's
own parameters are never modified here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from editing.core.tokens import TokenBatch, call_cost_tokens, collate, length_chunks


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX-512 BF16 or AMX): there, bf16 products
    run 2-10x faster than float32 ones; elsewhere they are emulated and slower."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 products are worth using on ``device``."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off for the block, then the model's previous mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted activation is captured."""


def _hidden_from_call(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def get_blocks(model: nn.Module, blocks_path: str) -> nn.ModuleList:
    blocks = model.get_submodule(blocks_path)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{blocks_path} is a {type(blocks).__name__}, expected an nn.ModuleList of blocks")
    return blocks


@torch.no_grad()
def compute_prefix(model: nn.Module, blocks_path: str, first_block: int, batch: TokenBatch) -> torch.Tensor:
    """(batch, seq, hidden): the hidden state entering block ``first_block``; later blocks do not run."""
    captured: list[torch.Tensor] = []

    def capture(_module, args, kwargs):
        captured.append(_hidden_from_call(args, kwargs).detach())
        raise _StopForward

    handle = get_blocks(model, blocks_path)[first_block].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


@contextmanager
def start_at_block(
    model: nn.Module, blocks_path: str, first_block: int, hidden: torch.Tensor
) -> Iterator[None]:
    """Within the block, forward passes skip blocks below ``first_block`` and feed it ``hidden`` instead.

    The block list is swapped for one holding only the upper blocks under their original indices, so
    parameter names (``model.layers.27....``) stay valid for ``functional_call``. Everything is restored
    on exit, also when the forward pass raises.
    """
    parent_path, _, attribute = blocks_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    blocks = get_blocks(model, blocks_path)
    upper = nn.ModuleList()
    for index in range(first_block, len(blocks)):
        upper.add_module(str(index), blocks[index])

    def feed(_module, args, kwargs):
        if hidden.shape[:2] != _hidden_from_call(args, kwargs).shape[:2]:
            raise ValueError(f"prefix shape {tuple(hidden.shape)} does not match the batch")
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = blocks[first_block].register_forward_pre_hook(feed, with_kwargs=True)
    setattr(parent, attribute, upper)
    try:
        yield
    finally:
        setattr(parent, attribute, blocks)
        handle.remove()


def _base_relative(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = model.base_model_prefix + "."
    outside = [name for name in weights if not name.startswith(prefix)]
    if outside:
        raise ValueError(f"only weights inside {model.base_model_prefix!r} can be overridden, got {outside}")
    return {name.removeprefix(prefix): tensor for name, tensor in weights.items()}


def final_hidden(
    model: nn.Module, batch: TokenBatch, weights: Mapping[str, torch.Tensor] | None = None
) -> torch.Tensor:
    """(batch, seq, hidden) output of the base model (after its final norm), with weights overridden."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False}
    if weights:
        output = torch.func.functional_call(model.base_model, _base_relative(model, weights), (), inputs)
    else:
        output = model.base_model(**inputs)
    return output.last_hidden_state


def scored_hidden(
    model: nn.Module,
    batch: TokenBatch,
    *,
    weights: Mapping[str, torch.Tensor] | None = None,
    prefix: tuple[str, int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(scored, hidden) final hidden states at the scored positions, before the vocabulary projection."""
    if prefix is None:
        hidden = final_hidden(model, batch, weights)
    else:
        blocks_path, first_block, prefix_hidden = prefix
        with start_at_block(model, blocks_path, first_block, prefix_hidden):
            hidden = final_hidden(model, batch, weights)
    return hidden[:, :-1][batch.prediction_mask]  # (scored, hidden)


def scored_logits(
    model: nn.Module,
    batch: TokenBatch,
    *,
    weights: Mapping[str, torch.Tensor] | None = None,
    prefix: tuple[str, int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(scored, vocab) logits at the scored positions only, in ``TokenBatch.scored_targets`` order.

    ``weights`` overrides parameters by full name (e.g. an edit's ``W + step * grad``); ``prefix`` is
    ``(blocks_path, first_block, hidden)`` from ``compute_prefix`` on the same batch.
    """
    return model.get_output_embeddings()(scored_hidden(model, batch, weights=weights, prefix=prefix))


def scored_hidden_by_length(
    model: nn.Module,
    sequences: Sequence[tuple[Sequence[int], int]],
    pad_id: int,
    *,
    prefix_for: Callable[[TokenBatch], tuple[str, int, torch.Tensor] | None] = lambda _batch: None,
    context_for: Callable[[list[int]], AbstractContextManager] = lambda _rows: nullcontext(),
    call_cost: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``scored_hidden`` of ``collate(sequences)``, computed in sub-batches of similar length.

    Returns (scored, hidden) states, (scored,) target ids and (scored,) sequence index, in the order the
    padded batch would give (by sequence, then position), so callers cannot tell the difference except
    by the time saved. ``context_for(rows)`` is entered around each sub-batch's pass (per-sequence
    low-rank edits, say, for the sequences ``rows``); ``prefix_for`` gives a sub-batch's frozen prefix;
    ``call_cost`` plans the sub-batches (``length_chunks``; default: the device's).
    """
    device = next(model.parameters()).device
    call_cost = call_cost_tokens(device) if call_cost is None else call_cost
    hidden, targets, owners = [], [], []
    for rows in length_chunks([len(ids) for ids, _ in sequences], call_cost):
        batch = collate([sequences[row] for row in rows], pad_id).to(device)
        with context_for(rows):
            hidden.append(scored_hidden(model, batch, prefix=prefix_for(batch)))  # (chunk scored, hidden)
        targets.append(batch.scored_targets)
        owners.append(torch.as_tensor(rows, device=device)[batch.scored_example])
    owner = torch.cat(owners)
    # Stable: a sequence's positions come out of its sub-batch in order and stay in order.
    order = torch.argsort(owner, stable=True)
    return torch.cat(hidden)[order], torch.cat(targets)[order], owner[order]
