"""What a batch of edits asks of each edited weight, kept per token row so batches can be re-combined.

An edit's rows (its keys ``u`` and the network's ``-step * u_tilde`` and ``delta_tilde`` at every scored
token) depend only on the base model, the editor and the edit itself. Computed once, they can be saved
and later aggregated with any other edits' rows: re-solving a ledger of a thousand edits is one solve,
not a thousand passes through the model. Stored as safetensors (tensors) and JSON (record ids); nothing
here unpickles.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROWS_FORMAT = "mend-edit-rows/1"
_FIELDS = ("keys", "pseudo_keys", "pseudo_values")


class EditRowsError(ValueError):
    """Saved rows are malformed or do not fit what they are combined with."""


@dataclass(frozen=True)
class EditRows:
    """Per edited weight: ``keys`` (rows, d_in), ``pseudo_keys`` (rows, d_in, already times ``-step``) and
    ``pseudo_values`` (rows, d_out); ``row_record`` (rows,) says which of ``record_ids`` each row serves."""

    keys: dict[str, torch.Tensor]
    pseudo_keys: dict[str, torch.Tensor]
    pseudo_values: dict[str, torch.Tensor]
    row_record: torch.Tensor
    record_ids: tuple[str, ...]

    def __post_init__(self) -> None:
        rows = self.row_record.shape[0]
        for field_name in _FIELDS:
            for name, tensor in getattr(self, field_name).items():
                if tensor.shape[0] != rows:
                    raise EditRowsError(f"{field_name}[{name}] has {tensor.shape[0]} rows, expected {rows}")
        if set(self.keys) != set(self.pseudo_keys) or set(self.keys) != set(self.pseudo_values):
            raise EditRowsError("keys, pseudo_keys and pseudo_values name different weights")
        if rows and int(self.row_record.max()) >= len(self.record_ids):
            raise EditRowsError(f"row_record points past the {len(self.record_ids)} record ids")
        if len(set(self.record_ids)) != len(self.record_ids):
            raise EditRowsError("record_ids has duplicates")

    @property
    def weight_names(self) -> list[str]:
        return list(self.keys)

    def __len__(self) -> int:
        return len(self.record_ids)

    def select(self, record_ids: Sequence[str]) -> EditRows:
        """The rows of some records, in the order given; an unknown id is an error."""
        position = {record_id: index for index, record_id in enumerate(self.record_ids)}
        missing = [record_id for record_id in record_ids if record_id not in position]
        if missing:
            raise EditRowsError(f"no rows for record(s) {missing[:5]}")
        wanted = torch.tensor([position[record_id] for record_id in record_ids], dtype=torch.long)
        parts = [torch.nonzero(self.row_record == index).flatten() for index in wanted.tolist()]
        rows = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        renumber = torch.repeat_interleave(torch.arange(len(parts)), torch.tensor([len(p) for p in parts]))
        return EditRows(
            {name: tensor[rows] for name, tensor in self.keys.items()},
            {name: tensor[rows] for name, tensor in self.pseudo_keys.items()},
            {name: tensor[rows] for name, tensor in self.pseudo_values.items()},
            renumber,
            tuple(record_ids),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"row_record": self.row_record.to(torch.int64)}
        for field_name in _FIELDS:
            for name, tensor in getattr(self, field_name).items():
                tensors[f"{field_name}/{name}"] = tensor.detach().to("cpu", torch.float32).contiguous()
        metadata = {"format": ROWS_FORMAT, "record_ids": json.dumps(list(self.record_ids))}
        save_file(tensors, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EditRows:
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != ROWS_FORMAT:
            raise EditRowsError(f"{path}: not a {ROWS_FORMAT} file (format {metadata.get('format')!r})")
        tensors = load_file(str(path))
        fields: dict[str, dict[str, torch.Tensor]] = {field_name: {} for field_name in _FIELDS}
        for key, tensor in tensors.items():
            field_name, _, name = key.partition("/")
            if field_name in fields:
                fields[field_name][name] = tensor
        return cls(
            **fields, row_record=tensors["row_record"], record_ids=tuple(json.loads(metadata["record_ids"]))
        )


def concat_rows(parts: Sequence[EditRows]) -> EditRows:
    """One ``EditRows`` holding every part's records, in order; record ids must not repeat."""
    parts = [part for part in parts if len(part)]
    if not parts:
        raise EditRowsError("no rows to combine")
    names = parts[0].weight_names
    for part in parts[1:]:
        if sorted(part.weight_names) != sorted(names):
            raise EditRowsError(f"rows for weights {sorted(part.weight_names)} cannot join {sorted(names)}")
    offsets, total = [], 0
    for part in parts:
        offsets.append(total)
        total += len(part)
    return EditRows(
        {name: torch.cat([part.keys[name] for part in parts]) for name in names},
        {name: torch.cat([part.pseudo_keys[name] for part in parts]) for name in names},
        {name: torch.cat([part.pseudo_values[name] for part in parts]) for name in names},
        torch.cat([part.row_record + offset for part, offset in zip(parts, offsets, strict=True)]),
        tuple(record_id for part in parts for record_id in part.record_ids),
    )
