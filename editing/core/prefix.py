"""A cache of frozen-prefix hidden states, keyed by token ids.

The hidden state entering the lowest edited block depends only on the tokens (edits change nothing
below it), so it is computed once per distinct sequence and reused by every pass and every epoch. With
right padding and causal attention an example's real positions do not depend on what it is batched
with, so the cache stores each sequence unpadded and re-pads on the way out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from editing.core.forward import compute_prefix
from editing.core.tokens import TokenBatch, call_cost_tokens, collate, length_chunks


class PrefixCache:
    def __init__(self, model: nn.Module, blocks_path: str, first_block: int, pad_id: int):
        self.model, self.blocks_path, self.first_block, self.pad_id = model, blocks_path, first_block, pad_id
        self._hidden: dict[tuple[int, ...], torch.Tensor] = {}  # ids -> (length, hidden)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._hidden)

    @staticmethod
    def _key(batch: TokenBatch, row: int) -> tuple[int, ...]:
        length = int(batch.attention_mask[row].sum())
        return tuple(batch.input_ids[row, :length].tolist())

    def _fill(self, keys: Sequence[tuple[int, ...]]) -> None:
        """Compute the missing sequences in one batched pass."""
        missing = list(dict.fromkeys(key for key in keys if key not in self._hidden))
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if not missing:
            return
        device = next(self.model.parameters()).device
        # Sequences of similar length together: a prompt padded to a paragraph's length costs as much as
        # the paragraph, through every frozen block.
        for chunk in length_chunks([len(key) for key in missing], call_cost_tokens(device)):
            keys = [missing[row] for row in chunk]
            batch = collate([(list(key), len(key)) for key in keys], self.pad_id).to(device)
            hidden = compute_prefix(self.model, self.blocks_path, self.first_block, batch)  # (n, seq, hidden)
            for row, key in enumerate(keys):
                self._hidden[key] = hidden[row, : len(key)].clone()

    def prefix(self, batch: TokenBatch) -> tuple[str, int, torch.Tensor]:
        """``(blocks_path, first_block, hidden (batch, seq, hidden))`` for ``scored_logits(prefix=...)``."""
        keys = [self._key(batch, row) for row in range(len(batch))]
        self._fill(keys)
        first = self._hidden[keys[0]]
        hidden = first.new_zeros((len(batch), batch.input_ids.shape[1], first.shape[-1]))
        for row, key in enumerate(keys):
            hidden[row, : len(key)] = self._hidden[key]
        return self.blocks_path, self.first_block, hidden

    def warm(self, sequences: Sequence[Sequence[int]]) -> None:
        """Precompute many sequences ahead of training (batched by length, ``_fill``)."""
        self._fill([tuple(ids) for ids in sequences])
