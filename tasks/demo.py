"""Seed the demo's flag log: ask the model questions with known answers and flag every wrong answer.

Right answers become reference prompts for the locality pool: facts the model already knows are
exactly what an edit must not break. Each facts file (one per demo night) is seeded once per store, so
a second run of the same night finds no new flags; a later night adds its reference prompts to the
earlier ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from tasks.dataset import REFERENCE_PROMPTS_KEY
from tasks.flags import Flag, append_flags
from tasks.models import load_version
from tasks.settings import FixSettings

LOGGER = logging.getLogger(__name__)
SEEDED_KEY = "demo/seeded.json"  # night one's marker (the first demo had only one night)


def seeded_key(facts_path: Path) -> str:
    return SEEDED_KEY if facts_path.name == "demo_facts.jsonl" else f"demo/seeded-{facts_path.stem}.json"


@dataclass(frozen=True)
class SeedResult:
    asked: int
    wrong: int
    already_seeded: bool
    examples: list[dict[str, str]]  # a few wrong answers, for the summary


def read_facts(path: Path) -> list[dict[str, str]]:
    facts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for index, fact in enumerate(facts):
        missing = [name for name in ("id", "prompt", "answer") if not fact.get(name)]
        if missing:
            raise ValueError(f"{path}: fact {index}: missing field(s) {missing}")
    return facts


def ask_facts(
    settings: FixSettings, facts: list[dict[str, str]], champion_version: str
) -> tuple[list[tuple[dict[str, str], str]], list[dict[str, str]]]:
    """Ask the champion every fact's prompt: (wrong facts with the answer given, facts answered right)."""
    from editing.core.generate import answer_matches, greedy_complete

    champion = load_version(settings, champion_version).loaded
    answers = greedy_complete(champion.model, champion.tokenizer, [fact["prompt"] for fact in facts])
    wrong = [(f, a) for f, a in zip(facts, answers, strict=True) if not answer_matches(a, f["answer"])]
    right = [f for f, a in zip(facts, answers, strict=True) if answer_matches(a, f["answer"])]
    return wrong, right


def add_reference_prompts(store, right: list[dict[str, str]]) -> None:
    """Facts the model knows join the locality pool: exactly what an edit must not break."""
    earlier = (
        store.read_text(REFERENCE_PROMPTS_KEY).splitlines() if store.exists(REFERENCE_PROMPTS_KEY) else []
    )
    lines = dict.fromkeys([*earlier, *(json.dumps({"prompt": f["prompt"]}) for f in right)])
    store.write_text(REFERENCE_PROMPTS_KEY, "".join(line + "\n" for line in lines if line.strip()))


def seed_flags(settings: FixSettings, facts_path: Path, champion_version: str) -> SeedResult:
    store = settings.open_store()
    marker = seeded_key(facts_path)
    if store.exists(marker):
        seeded = store.read_json(marker)
        return SeedResult(seeded["asked"], seeded["wrong"], True, [])
    facts = read_facts(facts_path)
    wrong, right = ask_facts(settings, facts, champion_version)
    flags = [
        Flag.create(
            model_name=settings.registered_model,
            model_version=str(champion_version),
            prompt=fact["prompt"],
            prediction=answer or "(empty)",
            correction=fact["answer"],
            paraphrases=tuple(p for p in [fact.get("paraphrase")] if p),
            subject=fact.get("subject"),
            reason="wrong answer to a known fact",
            reporter="mend-demo",
        )
        for fact, answer in wrong
    ]
    if flags:
        append_flags(store, flags)
    add_reference_prompts(store, right)
    store.write_json(marker, {"asked": len(facts), "wrong": len(wrong), "facts": str(facts_path)})
    LOGGER.info("demo: asked %d questions, flagged %d wrong answers", len(facts), len(wrong))
    examples = [{"prompt": f["prompt"], "answer": a, "correction": f["answer"]} for f, a in wrong[:5]]
    return SeedResult(len(facts), len(wrong), False, examples)


@task(name="seed-demo-flags")
def seed_task(settings: FixSettings, facts_path: str, champion_version: str) -> SeedResult:
    return seed_flags(settings, Path(facts_path), champion_version)
