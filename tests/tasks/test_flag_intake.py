"""Flag text is only data: limits and control characters are refused at intake with the field named,
and text that looks like a template, a format string or a shell command is stored as it was typed."""

from __future__ import annotations

import pytest

from tasks.flags import MAX_OTHER_CHARS, Flag, FlagFieldError, append_flags, read_flag_log
from tasks.storage import open_store

BASE = {
    "model_name": "mend-test", "model_version": "1", "prompt": "Q: Who wrote Hamlet?\nA:",
    "prediction": "Charles Dickens", "correction": "William Shakespeare", "reason": "wrong", "reporter": "tests",
}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"prompt": "Who wrote\x1b[2J Hamlet?"}, "prompt", "control character U+001B at position 9"),
        ({"correction": "William\x00Shakespeare"}, "correction", "control character U+0000"),
        ({"reporter": "alice\rmallory"}, "reporter", "control character U+000D"),
        ({"reason": "wrong\x7f"}, "reason", "control character U+007F"),
        ({"subject": "Hamlet\x9b"}, "subject", "control character U+009B"),
        ({"paraphrases": ["ok", "bad\x07"]}, "paraphrases[1]", "control character U+0007"),
        ({"prompt": "p" * 501}, "prompt", "longer than 500 characters (501)"),
        ({"correction": "c" * 201}, "correction", "longer than 200 characters (201)"),
        ({"reason": "r" * (MAX_OTHER_CHARS + 1)}, "reason", f"longer than {MAX_OTHER_CHARS} characters"),
        ({"paraphrases": ["same"] * 21}, "paraphrases", "more than 20 (21)"),
    ],
)
def test_bad_flag_text_is_refused_naming_the_field(changes, field, problem):
    with pytest.raises(FlagFieldError) as raised:
        Flag.create(**{**BASE, **changes})
    assert raised.value.field_name == field
    assert problem in str(raised.value) and f"field {field!r}" in str(raised.value)


def test_text_at_the_limits_with_line_breaks_and_tabs_is_accepted():
    flag = Flag.create(**{**BASE, "prompt": "Q:\t" + "p" * 493 + "\x85\nA:", "correction": "c" * 200})
    assert len(flag.prompt) == 500


def test_template_format_and_shell_text_is_stored_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile = "{{ 7*7 }} {0} %s %(x)s $(touch pwned) `touch pwned2` ${HOME} {% raw %}; rm -rf ~"
    store = open_store(str(tmp_path / "store"))
    flag = Flag.create(**{**BASE, "prompt": hostile, "correction": "$(id)", "paraphrases": [hostile]})
    append_flags(store, [flag])
    (stored,) = read_flag_log(store).flags
    assert stored.prompt == hostile and stored.correction == "$(id)" and stored.paraphrases == (hostile,)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()
