"""What the protected keys are measured on, chosen so that nothing a gate or a benchmark scores is among it.

* general text: ME-PPL sentences that are not among ME-PPL_1k (the gate's perplexity texts);
* facts: the CounterFact *edit* split (no benchmark or gate here reads it), each record giving three
  prompt/answer pairs with true answers: its prompt, its rephrase and its neighbourhood prompt. The
  protected-keys measurement keeps only those the base model answers right.

Every prompt and text that an evaluation scores is removed by exact (normalised) match: the CounterFact
val split (prompts, rephrases, neighbourhood prompts: the benchmarks and the gate's locality pool), zsRE
and KnowEdit ZsRE (every prompt of every probe), ME-PPL_1k, and whatever the caller adds (the demo's
questions, an editor's own training edits).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from editing.data.records import PromptAnswer, read_records, read_texts

GENERAL_TEXTS = "me_ppl/ME-PPL.json"
GATE_TEXTS = "me_ppl/ME-PPL_1k.json"
FACTS = "counterfact_easyedit_splits/counterfact-edit.json"
SCORED_RECORDS = (
    "counterfact_easyedit_splits/counterfact-val.json",
    "zsre_mend_portability/zsre_mend_eval_portability_gpt4.json",
    "knowedit_zsre/ZsRE-test-all.json",
)


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def scored_prompts(data_dir: Path) -> set[str]:
    """Normalised prompts and texts that some evaluation of this project scores."""
    scored = {normalise(text) for text in read_texts(data_dir / GATE_TEXTS)}
    for relative in SCORED_RECORDS:
        for record in read_records(data_dir / relative).records:
            prompts = [record.prompt, *record.rephrase_prompts]
            prompts += [probe.prompt for probe in (*record.locality, *record.portability)]
            scored.update(normalise(prompt) for prompt in prompts)
    return scored


def training_texts(data_dir: str | Path, count: int) -> list[str]:
    """Up to ``count`` ME-PPL sentences for an editor's general-text term, none of them among the gate's
    perplexity texts (ME-PPL_1k, a subset of ME-PPL): training must not see what the gate scores."""
    data_dir = Path(data_dir)
    held_out = {normalise(text) for text in read_texts(data_dir / GATE_TEXTS)}
    return [text for text in read_texts(data_dir / GENERAL_TEXTS) if normalise(text) not in held_out][:count]


@dataclass(frozen=True)
class ProtectedSources:
    texts: list[str]
    facts: list[PromptAnswer]
    excluded: int  # candidates dropped because an evaluation scores them


def protected_sources(
    data_dir: str | Path, *, texts: int, facts: int, exclude: Iterable[str] = ()
) -> ProtectedSources:
    """Up to ``texts`` general texts and the facts of up to ``facts`` CounterFact edit-split records."""
    data_dir = Path(data_dir)
    banned = scored_prompts(data_dir) | {normalise(prompt) for prompt in exclude}
    candidates = read_texts(data_dir / GENERAL_TEXTS)
    allowed = [text for text in candidates if normalise(text) not in banned]
    kept_texts, excluded = allowed[:texts], len(candidates) - len(allowed)
    kept_facts: list[PromptAnswer] = []
    for record in read_records(data_dir / FACTS, limit=facts).records:
        if record.target_true is None:
            continue
        pairs = [
            (record.prompt, record.target_true),
            *((p, record.target_true) for p in record.rephrase_prompts),
        ]
        pairs += [(probe.prompt, probe.answer) for probe in record.locality]
        for prompt, answer in pairs:
            if normalise(prompt) in banned:
                excluded += 1
                continue
            kept_facts.append(PromptAnswer(prompt, answer, "protected"))
    return ProtectedSources(kept_texts, kept_facts, excluded)
