"""Teacher-forced batches score exactly the target's tokens, with logits shifted by one position.

Checked on every reader's records, with both tiny tokenizer styles (metaspace "▁Paris" and byte-level
"ĠParis") and with the real SmolLM2 tokenizer.
"""

from __future__ import annotations

import functools
import json

import pytest
import torch

from editing.core.forward import scored_logits
from editing.core.models import default_model_dir
from editing.core.tokens import IGNORE_INDEX, encode_batch, encode_example
from editing.data.records import EditRecord, read_records
from tests.editing.test_data import COUNTERFACT, DATA, KNOWEDIT, PROJECT, ZSRE
from tests.editing.test_real_model import real_model, skip_without_real_model
from tests.tiny import TinyKind, make_tiny_model

REAL_FILES = {
    "zsre": "zsre_mend_portability/zsre_mend_eval_portability_gpt4.json",
    "counterfact": "counterfact_easyedit_splits/counterfact-val.json",
    "knowedit": "knowedit_zsre/ZsRE-test-all.json",
}
FIXTURES = {"zsre": ZSRE, "counterfact": COUNTERFACT, "knowedit": KNOWEDIT, "jsonl": PROJECT}
READERS = sorted(FIXTURES)
REAL_PER_FILE = 20


@pytest.fixture(scope="module")
def reader_records(tmp_path_factory) -> dict[str, list[EditRecord]]:
    """Per reader: its fixture record plus, when the data is on this machine, real records."""
    folder = tmp_path_factory.mktemp("readers")
    by_reader = {}
    for reader, raw in FIXTURES.items():
        path = folder / (f"{reader}.jsonl" if reader == "jsonl" else f"{reader}.json")
        path.write_text(json.dumps(raw) if reader == "jsonl" else json.dumps([raw]))
        records = list(read_records(path, reader).records)
        if reader in REAL_FILES and (DATA / REAL_FILES[reader]).is_file():
            records += read_records(DATA / REAL_FILES[reader], reader, limit=REAL_PER_FILE).records
        by_reader[reader] = records
    return by_reader


def queries(records) -> list[tuple[str, str]]:
    """Every (prompt, target) a record is scored on."""
    pairs = []
    for record in records:
        pairs.append((record.prompt, record.target_new))
        pairs.extend((prompt, record.target_new) for prompt in record.rephrase_prompts)
        pairs.extend((probe.prompt, probe.answer) for probe in (*record.locality, *record.portability))
    return pairs


@functools.cache
def real_tokenizer():
    from transformers import AutoTokenizer

    from editing.core.models import _prepare_tokenizer

    return _prepare_tokenizer(AutoTokenizer.from_pretrained(default_model_dir()))


def tokenizer_for(name: str):
    if name == "smollm2":
        skip_without_real_model()
        return real_tokenizer()
    return make_tiny_model(TinyKind(name)).tokenizer


TOKENIZERS = [
    pytest.param("llama", id="tiny-metaspace"),
    pytest.param("gpt2", id="tiny-bytelevel"),
    pytest.param("smollm2", id="smollm2", marks=pytest.mark.real_model),
]


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("tokenizer_name", TOKENIZERS)
@pytest.mark.parametrize("reader", READERS)
def test_scored_positions_are_the_target_tokens(reader_records, reader, tokenizer_name):
    tokenizer = tokenizer_for(tokenizer_name)
    pairs = queries(reader_records[reader])
    batch = encode_batch(tokenizer, [p for p, _ in pairs], [t for _, t in pairs])
    scored = batch.labels != IGNORE_INDEX
    # Labels are the input tokens themselves at the scored positions, and padding is never scored.
    assert torch.equal(batch.labels[scored], batch.input_ids[scored])
    assert not (scored & (batch.attention_mask == 0)).any()
    checked = 0
    for row, (prompt, target) in enumerate(pairs):
        ids, first = encode_example(tokenizer, prompt, target)
        positions = scored[row].nonzero().flatten().tolist()
        assert positions == list(range(first, len(ids)))  # one contiguous run ending at the last token
        if tokenizer.unk_token_id in ids:
            continue  # the tiny tokenizers cannot spell every real record; decoding would show <unk>
        # The scored tokens are exactly the target: the text they add after the prompt is " " + target.
        assert decode(tokenizer, ids[:first]) == prompt
        assert decode(tokenizer, ids)[len(prompt) :] == " " + target
        checked += 1
    assert checked >= 1


@pytest.mark.parametrize("kind", list(TinyKind), ids=lambda kind: kind.value)
def test_scored_logits_are_shifted_by_one(kind, reader_records):
    loaded = make_tiny_model(kind)
    pairs = queries(reader_records["knowedit"])[:6]
    assert_shifted(loaded.model, loaded.tokenizer, pairs)


@pytest.mark.real_model
def test_real_scored_logits_are_shifted_by_one(reader_records):
    loaded = real_model()
    pairs = queries(reader_records["counterfact"])[:4]
    assert_shifted(loaded.model, loaded.tokenizer, pairs)


def assert_shifted(model, tokenizer, pairs) -> None:
    """Row i of ``scored_logits`` equals the full model's logits at ``t - 1`` for the label at ``t``."""
    batch = encode_batch(tokenizer, [p for p, _ in pairs], [t for _, t in pairs])
    with torch.no_grad():
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        scored = scored_logits(model, batch)
    rows, columns = (batch.labels != IGNORE_INDEX).nonzero(as_tuple=True)  # row-major, like scored_logits
    assert scored.shape == (len(rows), full.shape[-1])
    torch.testing.assert_close(scored, full[rows, columns - 1], rtol=1e-4, atol=1e-4)
    assert torch.equal(batch.scored_targets, batch.input_ids[rows, columns])


@pytest.mark.parametrize("tokenizer_name", [TOKENIZERS[1], TOKENIZERS[2]])
def test_target_alone_tokenises_differently(tokenizer_name, reader_records):
    """Why targets are cut out of the joint tokenisation: alone, "Paris" is not " Paris"."""
    tokenizer = tokenizer_for(tokenizer_name)
    differing = []
    for reader in READERS:
        for prompt, target in queries(reader_records[reader]):
            ids, first = encode_example(tokenizer, prompt, target)
            if tokenizer(target, add_special_tokens=False)["input_ids"] != ids[first:]:
                differing.append(target)
    assert differing
