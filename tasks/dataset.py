"""Assemble the edit dataset: for each accepted flag an edit pair, equivalence pairs (its own paraphrases
plus generated ones) and locality pairs from a pool of reference prompts answered by the champion,
half of them hard neighbours close to the edit in embedding space but about something else; plus a
retention set of every edit promoted before. Saved as versioned JSONL in the run's folder."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from prefect import task

from editing.data.records import EditRecord, PromptAnswer, read_records, write_jsonl
from tasks.extract import read_flags
from tasks.flags import Flag, normalize, read_flag_log
from tasks.ledger import FlagState, Ledger
from tasks.models import load_version, scratch_dir
from tasks.progress import Progress, chunked
from tasks.settings import FixSettings
from tasks.storage import Store

LOGGER = logging.getLogger(__name__)
REFERENCE_PROMPTS_KEY = (
    "locality/reference_prompts.jsonl"  # extra reference prompts (one {"prompt"} per line)
)
NEIGHBOURHOOD_FILE = "counterfact_easyedit_splits/counterfact-val.json"


@dataclass(frozen=True)
class DatasetKeys:
    dataset: str  # EditRecords of this run (project JSONL)
    retention: str  # EditRecords of every edit promoted before
    metadata: str
    pool: str  # the locality pool used (champion's answers)


def _reference_prompts(settings: FixSettings, store: Store) -> list[str]:
    prompts = []
    if store.exists(REFERENCE_PROMPTS_KEY):
        prompts += [
            json.loads(line)["prompt"]
            for line in store.read_text(REFERENCE_PROMPTS_KEY).splitlines()
            if line.strip()
        ]
    neighbourhood = read_records(settings.data_file(NEIGHBOURHOOD_FILE), limit=settings.locality_pool_prompts)
    prompts += [record.locality[0].prompt for record in neighbourhood.records]
    return list(dict.fromkeys(prompts))


def locality_pool(
    settings: FixSettings, store: Store, champion, champion_version: str
) -> tuple[list[PromptAnswer], str]:
    """The pool for this champion, built once per champion version and kept in the store."""
    from editing.data.locality import build_locality_pool, load_pool, save_pool

    key = f"locality/pool-v{champion_version}-{champion.fingerprint[:12]}.jsonl"
    workspace = scratch_dir("pool")
    if store.exists(key):
        pool, _ = load_pool(store.download(key, workspace / "pool.jsonl"))
        return pool, key
    prompts = _reference_prompts(settings, store)
    progress = Progress("building the locality pool", len(prompts), unit="prompts")
    pool, rejected, seen, done = [], [], set(), 0
    for chunk in chunked(prompts, 25):  # the pool build has no callback of its own
        built = build_locality_pool(champion.model, champion.tokenizer, chunk)
        fresh = [probe for probe in built.pool if normalize(probe.prompt) not in seen]
        seen.update(normalize(probe.prompt) for probe in fresh)
        pool += fresh
        rejected += built.rejected
        done += len(chunk)
        progress.update(done, size=len(pool))
    progress.finish(size=len(pool))
    if rejected:
        LOGGER.info("locality pool: %d prompts left out, e.g. %s", len(rejected), rejected[:3])
    save_pool(
        workspace / "pool.jsonl", pool, champion_version=champion_version, fingerprint=champion.fingerprint
    )
    store.upload(workspace / "pool.jsonl", key)
    return pool, key


def _retention_records(store: Store, ledger: Ledger, champion_ledger: tuple[str, ...]) -> list[EditRecord]:
    """Every edit the champion holds (its snapshot's ledger), so the gate checks that all of them stay
    fixed; a champion from before ledgers were recorded falls back to every promoted flag."""
    if champion_ledger:
        kept = set(champion_ledger)
    else:
        states = ledger.states()
        kept = {f for f, entry in states.items() if entry.state == FlagState.PROMOTED}
    return [
        EditRecord(f.flag_id, f.prompt, f.correction, subject=f.subject, rephrase_prompts=f.paraphrases)
        for f in read_flag_log(store).flags
        if f.flag_id in kept
    ]


def _same_subject(
    flags: list[Flag], champion, pool: list[PromptAnswer], per_edit: int, min_probability: float
) -> list[list[PromptAnswer]]:
    """Each flag's subject's other facts that the champion answers (none where the flag names no subject)."""
    from editing.data.same_subject import SubjectEdit, same_subject_probes

    edits = [SubjectEdit(flag.prompt, flag.subject, flag.correction) for flag in flags]
    progress = Progress("asking the champion about the flagged subjects", len(flags), unit="flags")
    probes = same_subject_probes(
        champion.model, champion.tokenizer, edits, pool, per_edit=per_edit, min_probability=min_probability
    )
    progress.finish()
    return probes


def _edit_records(
    flags: list[Flag],
    champion,
    pool: list[PromptAnswer],
    per_edit: int,
    same_subject: tuple[int, float] = (0, 0.3),  # probes per edit, minimum first-token probability
) -> list[EditRecord]:
    from editing.data.equivalence_set import EquivalenceRequest, equivalence_prompt_sets
    from editing.data.locality import prompt_embeddings, select_locality

    edited = {normalize(flag.prompt) for flag in flags}
    # A pool prompt that one of this batch's flags edits is not a locality probe for the others.
    usable = [probe for probe in pool if normalize(probe.prompt) not in edited]
    model, tokenizer = champion.model, champion.tokenizer
    pool_embeddings = prompt_embeddings(model, tokenizer, [probe.prompt for probe in usable])
    edit_embeddings = prompt_embeddings(model, tokenizer, [flag.prompt for flag in flags])
    hard = per_edit // 2
    locality = select_locality(
        [flag.prompt for flag in flags], [flag.subject for flag in flags], usable, pool_embeddings,
        edit_embeddings, corrections=[flag.correction for flag in flags], hard=hard,
        random=per_edit - hard, seed=0,
    )  # fmt: skip
    # Locality of the second kind, reported apart by the gate (locality_same_subject).
    own_facts = _same_subject(flags, champion, usable, *same_subject)
    progress = Progress("checking paraphrases of the flagged prompts", len(flags), unit="flags")
    rephrases = equivalence_prompt_sets(
        [EquivalenceRequest(flag.prompt, flag.paraphrases, flag.subject) for flag in flags],
        model=model, tokenizer=tokenizer,
    )  # fmt: skip
    progress.finish()
    records = []
    for flag, neighbours, own, equivalent in zip(flags, locality, own_facts, rephrases, strict=True):
        records.append(EditRecord(record_id=flag.flag_id, prompt=flag.prompt, target_new=flag.correction,
                                  subject=flag.subject, rephrase_prompts=tuple(equivalent),
                                  locality=(*neighbours, *own)))  # fmt: skip
    return records


def assemble_dataset(
    settings: FixSettings, run_id: str, flags_key: str, champion_version: str
) -> DatasetKeys:
    store = settings.open_store()
    flags = read_flags(store, flags_key)
    state = load_version(settings, champion_version)
    champion = state.loaded
    pool, pool_key = locality_pool(settings, store, champion, champion_version)
    same_subject = (settings.same_subject_per_edit, settings.same_subject_min_probability)
    records = _edit_records(flags, champion, pool, settings.locality_per_edit, same_subject)
    retained = _retention_records(store, Ledger(store), state.metadata.ledger_flag_ids)
    workspace = scratch_dir(run_id)
    prefix = f"runs/{run_id}"
    for name, items in (("edit_dataset.jsonl", records), ("retention.jsonl", retained)):
        store.upload(write_jsonl(items, workspace / name), f"{prefix}/{name}")
    metadata = {
        "run_id": run_id,
        "champion_version": champion_version,
        "edits": len(records),
        "equivalence_prompts": sum(len(r.rephrase_prompts) for r in records),
        "locality_probes": sum(len(r.locality) for r in records),
        "same_subject_probes": sum(p.kind == "same_subject" for r in records for p in r.locality),
        "retained_edits": len(retained),
        "locality_pool": pool_key,
        "locality_pool_size": len(pool),
    }
    store.write_json(f"{prefix}/edit_dataset.json", metadata)
    LOGGER.info("assembled %s", metadata)
    return DatasetKeys(
        f"{prefix}/edit_dataset.jsonl", f"{prefix}/retention.jsonl", f"{prefix}/edit_dataset.json", pool_key
    )


@task(name="assemble-edit-dataset")
def assemble_task(settings: FixSettings, run_id: str, flags_key: str, champion_version: str) -> DatasetKeys:
    return assemble_dataset(settings, run_id, flags_key, champion_version)
