"""Teacher-forced batches: a prompt followed by the target whose tokens are scored.

Targets are scored as the tokens that follow the prompt in the tokenisation of ``prompt + separator +
target``. Datasets store targets without their leading space, and tokenising the target on its own
gives different tokens (" Paris" is one token, "Paris" another), so we tokenise the whole string once
and use character offsets to find where the target starts.

Position convention (used everywhere): the logits at position ``t`` predict the token at ``t + 1``.
``labels[b, t]`` holds the token id at ``t`` when that token is scored and ``IGNORE_INDEX`` otherwise,
so the logits that score it sit at ``t - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100
DEFAULT_SEPARATOR = " "


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded token ids with the positions to score."""

    input_ids: torch.Tensor  # (batch, seq) long
    attention_mask: torch.Tensor  # (batch, seq) long, 1 for real tokens
    labels: torch.Tensor  # (batch, seq) long, IGNORE_INDEX where not scored

    @property
    def prediction_mask(self) -> torch.Tensor:
        """(batch, seq - 1) bool: logits at ``[b, t]`` are scored (they predict token ``t + 1``)."""
        return self.labels[:, 1:] != IGNORE_INDEX

    @property
    def scored_targets(self) -> torch.Tensor:
        """(scored,) the token ids that the scored logits must predict, in row-major order."""
        return self.labels[:, 1:][self.prediction_mask]

    @property
    def scored_example(self) -> torch.Tensor:
        """(scored,) which example each scored position belongs to."""
        rows = torch.arange(self.labels.shape[0], device=self.labels.device)[:, None]
        return rows.expand_as(self.prediction_mask)[self.prediction_mask]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: Sequence[int]) -> TokenBatch:
        """A sub-batch of some examples, trimmed to its longest example."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.input_ids.device)
        width = int(self.attention_mask[index].sum(dim=1).max())
        return TokenBatch(
            self.input_ids[index, :width], self.attention_mask[index, :width], self.labels[index, :width]
        )


def encode_example(
    tokenizer, prompt: str, target: str, separator: str = DEFAULT_SEPARATOR
) -> tuple[list[int], int]:
    """Token ids of ``prompt + separator + target`` and the index of the first target token."""
    if not target:
        raise ValueError(f"empty target for prompt {prompt!r}")
    text = prompt + separator + target
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    boundary = len(prompt)
    # The first token that ends past the prompt holds the separator or the target's first characters.
    # Special tokens (offsets (0, 0)) never count as target tokens.
    first_target = next(
        (i for i, (start, end) in enumerate(offsets) if end > boundary and end > start), len(ids)
    )
    if first_target == 0:
        raise ValueError(f"prompt {prompt!r} tokenises to nothing before its target")
    if first_target >= len(ids):
        raise ValueError(f"target {target!r} after prompt {prompt!r} produced no tokens")
    return ids, first_target


def collate(encoded: Sequence[tuple[Sequence[int], int]], pad_id: int) -> TokenBatch:
    """Right-pad ``(ids, first_scored_index)`` pairs into a batch; tokens from the index on are scored."""
    if not encoded:
        raise ValueError("cannot collate an empty batch")
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, first_scored) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.as_tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, first_scored : len(ids)] = torch.as_tensor(ids[first_scored:])
    return TokenBatch(input_ids, attention_mask, labels)


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_batch(
    tokenizer,
    prompts: Sequence[str],
    targets: Sequence[str],
    separator: str = DEFAULT_SEPARATOR,
) -> TokenBatch:
    """Right-padded batch of ``prompt + separator + target`` with only the target tokens scored."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    encoded = [encode_example(tokenizer, p, t, separator) for p, t in zip(prompts, targets, strict=True)]
    return collate(encoded, pad_token_id(tokenizer))


def encode_texts(tokenizer, texts: Sequence[str]) -> TokenBatch:
    """Batch for perplexity: every token after the first is scored."""
    return collate([(tokenizer(text)["input_ids"], 1) for text in texts], pad_token_id(tokenizer))


# A call's fixed overhead in token positions (``length_chunks``). A one-off timing of SmolLM2's prefix
# pass on 2 CPU cores put a call's overhead at about 48 positions' worth; both costs grow with the number
# of blocks, so the ratio holds for any slice of the model. On a GPU a position costs almost nothing next
# to a call, and small batches are best left whole.
CPU_CALL_COST_TOKENS = 48
GPU_CALL_COST_TOKENS = 4096


def call_cost_tokens(device: torch.device) -> int:
    return GPU_CALL_COST_TOKENS if device.type == "cuda" else CPU_CALL_COST_TOKENS


def length_chunks(lengths: Sequence[int], call_cost: int, max_rows: int = 256) -> list[list[int]]:
    """Row indices grouped into sub-batches of similar length, so that padding costs little.

    A padded batch computes ``rows x longest`` token positions; one call more costs about ``call_cost``
    positions' worth of fixed overhead (kernel launches, Python, per-layer bookkeeping). Sorted by length,
    the rows are cut into contiguous runs that minimise the sum of both (dynamic programming over the
    sorted rows; a run holds at most ``max_rows``). Up to ``max_rows`` rows, one call for all of them is
    among the candidates, so chunking never plans more work than the padded batch.
    """
    if call_cost < 0 or max_rows < 1:
        raise ValueError(f"call_cost must be >= 0 and max_rows >= 1, got {call_cost}, {max_rows}")
    order = sorted(range(len(lengths)), key=lambda row: lengths[row])
    sorted_lengths = [lengths[row] for row in order]
    count = len(order)
    best = [0.0] + [float("inf")] * count  # best[end]: least cost of the first ``end`` sorted rows
    cut = [0] * (count + 1)  # cut[end]: where the last run of that plan starts
    for end in range(1, count + 1):
        longest = sorted_lengths[end - 1]  # sorted: the run's last row is its longest
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + call_cost + (end - start) * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    chunks, end = [], count
    while end > 0:
        chunks.append(order[cut[end] : end])
        end = cut[end]
    return chunks[::-1]
