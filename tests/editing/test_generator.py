"""The training-data generator: its templates, determinism, cache, and that nothing scored is generated."""

from __future__ import annotations

import dataclasses
import json

import pytest

from editing.config import ConfigError
from editing.data.edit_record import SAME_SUBJECT_KINDS, EditRecord, PromptAnswer
from editing.data.generator import (
    NEIGHBOUR_KIND,
    Fact,
    GeneratorConfig,
    build_records,
    cached_generation,
    generate_records,
    scored_subjects,
)
from editing.data.protected_sources import normalise, scored_prompts
from editing.data.relation_templates import (
    SubjectCue,
    TemplateError,
    load_templates,
    parse_templates,
    subject_kinds,
)
from editing.training.mix import mix_records
from tests.paths import DATA_DIR

SMALL = GeneratorConfig(examples=40, seed=3, min_probability=0.0, max_new_tokens=3, batch_size=16)


def test_the_project_templates_cover_many_relations_in_several_wordings():
    templates = load_templates()
    assert len(templates.relations) >= 40
    assert all(len(relation.wordings) >= 2 for relation in templates.relations)
    kinds = {relation.subject_kind for relation in templates.relations}
    assert kinds <= {kind for cue in templates.cues for kind in cue.kinds}


@pytest.mark.parametrize(
    ("relation", "message"),
    [
        ({"id": "P1", "name": "x", "subject": "person", "wordings": ["{} a", "b"]}, "exactly once"),
        ({"id": "P1", "name": "x", "subject": "person", "wordings": ["{} a"]}, "at least two"),
        ({"id": "P1", "name": "x", "subject": "planet", "wordings": ["{} a", "{} b"]}, "'subject'"),
    ],
)
def test_a_bad_relation_is_refused_by_id_and_field(relation, message):
    text = json.dumps({"subject_cues": [{"cue": "born", "kinds": ["person"]}], "relations": [relation]})
    with pytest.raises(TemplateError, match=message) as error:
        parse_templates(text)
    assert "P1" in str(error.value)


def test_subject_kinds_come_from_the_cues_of_their_own_prompts():
    records = [
        EditRecord("a", "The mother tongue of Ada Lovelace is", "x", subject="Ada Lovelace"),
        EditRecord("b", "Ada Lovelace, who plays the position", "x", subject="Ada Lovelace"),
        EditRecord("c", "In Freedonia, they understand", "x", subject="Freedonia"),
        EditRecord("d", "Something else about Zork", "x", subject="Zork"),
    ]
    cues = [
        SubjectCue("mother tongue", ("person",)),
        SubjectCue("position", ("person", "athlete")),
        SubjectCue("In {}, they understand", ("country",)),
    ]
    assert subject_kinds(records, cues) == {
        "Ada Lovelace": frozenset({"person", "athlete"}),
        "Freedonia": frozenset({"country"}),
    }


def _facts() -> list[Fact]:
    return [
        Fact("Ada", "P19", "Ada was born in the city of", "London", 0.9),
        Fact("Bob", "P19", "Bob was born in the city of", "Paris", 0.8),
        Fact("Ada", "P27", "Ada is a citizen of the country", "England", 0.7),
    ]


def test_records_carry_a_counterfactual_a_paraphrase_and_both_kinds_of_locality():
    info: dict[str, int] = {"no_counterfactual": 0, "no_same_subject_probe": 0, "excluded_as_scored": 0}
    records = build_records(_facts(), load_templates(), set(), seed=0, info=info)
    ada = next(record for record in records if record.subject == "Ada" and "P19" in record.record_id)
    assert ada.target_new == "Paris" and ada.target_true == "London"
    assert ada.prompt != ada.rephrase_prompts[0] and "Ada" in ada.rephrase_prompts[0]
    kinds = {probe.kind: probe for probe in ada.locality}
    assert kinds[NEIGHBOUR_KIND] == PromptAnswer("Bob was born in the city of", "Paris", NEIGHBOUR_KIND)
    assert kinds["same_subject"].answer == "England" and "same_subject" in SAME_SUBJECT_KINDS
    # England is the only P27 object, so that fact has no counterfactual and is counted, not dropped silently.
    assert info["no_counterfactual"] == 1 and len(records) == 2


def test_a_scored_wording_is_never_generated():
    templates = load_templates()
    p19 = next(relation for relation in templates.relations if relation.relation_id == "P19")
    banned = {normalise(wording.replace("{}", "Ada")) for wording in p19.wordings[1:]}
    info = {"no_counterfactual": 0, "no_same_subject_probe": 0, "excluded_as_scored": 0}
    records = build_records(_facts(), templates, banned, seed=0, info=info)
    assert all(record.subject != "Ada" or "P19" not in record.record_id for record in records)
    assert info["excluded_as_scored"] == 1


@pytest.fixture(scope="module")
def generated(tiny_llama):
    return generate_records(tiny_llama.model, tiny_llama.tokenizer, DATA_DIR, SMALL)


def test_generation_is_deterministic_and_holds_nothing_an_evaluation_scores(tiny_llama, generated):
    again = generate_records(tiny_llama.model, tiny_llama.tokenizer, DATA_DIR, SMALL)
    assert [r.to_json() for r in again.records] == [r.to_json() for r in generated.records]
    assert len(generated.records) >= 20 and generated.info["relations"] >= 5
    scored, subjects = scored_prompts(DATA_DIR), scored_subjects(DATA_DIR)
    for record in generated.records:
        prompts = [record.prompt, *record.rephrase_prompts, *(probe.prompt for probe in record.locality)]
        assert not {normalise(prompt) for prompt in prompts} & scored, record.record_id
        assert normalise(record.subject) not in subjects
        assert normalise(record.target_new) != normalise(record.target_true)
    assert any(probe.kind == "same_subject" for r in generated.records for probe in r.locality)


def test_the_cache_is_hit_for_the_same_model_and_settings_only(tmp_path, tiny_llama, generated):
    built, hit = cached_generation(tmp_path, tiny_llama.fingerprint, SMALL, lambda: generated)
    assert not hit

    def must_not_build():
        raise AssertionError("a cached generation was built again")

    cached, hit = cached_generation(tmp_path, tiny_llama.fingerprint, SMALL, must_not_build)
    assert hit and [r.to_json() for r in cached.records] == [r.to_json() for r in built.records]
    _, hit = cached_generation(
        tmp_path, tiny_llama.fingerprint, dataclasses.replace(SMALL, seed=4), lambda: generated
    )
    assert not hit  # other settings, another file
    path = next(tmp_path.glob("generated-*.json"))
    raw = json.loads(path.read_text())
    path.write_text(json.dumps({**raw, "fingerprint": "another model"}))
    with pytest.raises(ValueError, match="fingerprint"):
        cached_generation(tmp_path, tiny_llama.fingerprint, SMALL, must_not_build)


def test_mixes_name_their_sources_and_refuse_a_missing_one():
    counterfact = [EditRecord(f"cf-{i}", "p", "t") for i in range(3)]
    generated = [EditRecord(f"gen-{i}", "p", "t") for i in range(2)]
    assert mix_records("counterfact", counterfact, generated, seed=0) == counterfact
    assert mix_records("generated", counterfact, generated, seed=0) == generated
    both = mix_records("counterfact+generated", counterfact, generated, seed=0)
    assert sorted(r.record_id for r in both) == sorted(r.record_id for r in counterfact + generated)
    assert both == mix_records("counterfact+generated", counterfact, generated, seed=0)
    with pytest.raises(ConfigError, match="needs generated records"):
        mix_records("counterfact+generated", counterfact, [], seed=0)
    with pytest.raises(ConfigError, match="unknown training mix"):
        mix_records("wikipedia", counterfact, generated, seed=0)
