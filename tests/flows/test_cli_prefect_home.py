"""The CLI prepares Prefect's home before Prefect needs it: `make run` on a fresh checkout has no `.mend`."""

from __future__ import annotations

from flows.cli_pipeline import _prefect_home


def test_prefect_home_is_created_with_its_parents_on_a_fresh_checkout(tmp_path, monkeypatch):
    mend_home = tmp_path / "fresh-checkout" / ".mend"
    monkeypatch.setenv("MEND_HOME", str(mend_home))
    # setenv first so that monkeypatch restores the variable _prefect_home sets for the process
    monkeypatch.setenv("PREFECT_HOME", "unset")
    monkeypatch.delenv("PREFECT_HOME")
    _prefect_home()
    assert (mend_home / "prefect").is_dir()


def test_a_prefect_home_set_by_the_user_is_kept_and_created(tmp_path, monkeypatch):
    chosen = tmp_path / "elsewhere" / "prefect"
    monkeypatch.setenv("PREFECT_HOME", str(chosen))
    _prefect_home()
    assert chosen.is_dir()
