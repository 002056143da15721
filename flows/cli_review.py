"""The approver's view in the terminal: ``mend review``, ``mend status`` and the verdict of a failed gate
with what to do next. Rendering only; the data comes from ``tasks.review`` and ``tasks.status``."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from flows.cli_output import _format, console, format_against
from tasks.progress import format_seconds


def shortfall(item: dict[str, Any]) -> str:
    observed, threshold = format_against(item.get("observed"), item.get("threshold"))
    return f"{item['name']} {observed} (needs {threshold})"


def gate_table(expectations: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("expectation", "result", "observed", "threshold"):
        table.add_column(column)
    checks = [item for item in expectations if item.get("threshold") is not None or not item["passed"]]
    for item in checks:
        verdict = "pass" if item["passed"] else "[bold red]FAIL[/]"
        if not item.get("applicable", True):
            verdict = "n/a"
        table.add_row(item["name"], verdict, *format_against(item.get("observed"), item.get("threshold")))
    if len(checks) < len(expectations):
        table.caption = (
            f"and {len(expectations) - len(checks)} data checks of the evaluation table, all passed"
        )
    return table


def print_review(review: dict[str, Any], version: str, page: str, review_page: str) -> None:
    """What ``mend review --version N`` prints: the review page's content, cut to a terminal."""
    passed = review["gate"].get("passed")
    summary = review["summary"]
    console.print(f"[bold]{review['model']} version {version}[/]: {summary['edits']} edit(s) on champion "
                  f"version {review.get('champion_version')}, editor {review.get('editor_uri') or review.get('editor')}")  # fmt: skip
    console.print(gate_table(review["gate"].get("expectations", []),
                             f"gate: {'PASSED' if passed else 'FAILED'}"))  # fmt: skip
    change = summary.get("perplexity_change")
    retained = summary.get("retained_edits") or 0
    console.print(
        f"perplexity {_format(summary.get('perplexity_before'))} -> {_format(summary.get('perplexity_after'))}"
        f" ({'-' if change is None else f'{change:+.1%}'}); retention "
        f"{_format(summary.get('retention')) + f' of {retained} promoted edit(s)' if retained else 'n/a (no earlier edits)'}; "
        f"{summary.get('locality_regressions', 0)} locality answer(s) changed"
        + (f", {summary['near_tie_regressions']} of them near ties" if summary.get("near_tie_regressions") is not None else "")
    )  # fmt: skip
    table = Table(title="edits", title_justify="left")
    for column in ("prompt", "old answer", "new answer", "edit", "paraphrases", "locality", "flagged by"):
        table.add_column(column, overflow="fold")
    for row in review["edits"]:
        paraphrases = row.get("paraphrases", [])
        right = sum(1 for item in paraphrases if item["correct"])
        flag = row.get("flag") or {}
        table.add_row(row["prompt"], row.get("answer_before", ""), row.get("answer_after", ""),
                      _format(row.get("edit_success")), f"{right}/{len(paraphrases)} answer right" if paraphrases else "-",
                      _format(row.get("locality_unchanged")), f"{flag.get('reporter') or '?'} {str(flag.get('flagged_at') or '')[:10]}")  # fmt: skip
    console.print(table)
    for item in review["regressions"][:5]:
        tie = " (near tie)" if item.get("near_tie") == "yes" else ""
        cost = f", costs the gate {item['gate_cost']}" if item.get("gate_cost") else ""
        console.print(
            f"  locality changed: {item['prompt']!r}: {item['before']!r} -> {item['after']!r}{tie}{cost}"
        )
    if len(review["regressions"]) > 5:
        console.print(f"  ... and {len(review['regressions']) - 5} more on the review page")
    console.print(f"version page: {page}", soft_wrap=True)  # whole, so that it can be clicked or copied
    console.print(f"review page:  {review_page}", soft_wrap=True)
    if passed:
        console.print(f"approve: add the tag approved_by=<you> on the version page, then `mend promote --version {version}`; "
                      f"or `mend promote --version {version} --approve --approver <you>`")  # fmt: skip


def _print_neighbour_cost(cost: dict | None) -> None:
    """What the changed answers took off the neighbour locality mean, split as a gate owner weighs it."""
    if not cost or not cost.get("total"):
        return
    from editing.evaluation.answers import first_clause

    largest = "; ".join(
        f"{item['prompt']!r} {first_clause(item['before'])} -> {first_clause(item['after'])} ({item['gate_cost']:.3f}"
        + (f" over {item['edits']} edits" if item.get("edits", 1) > 1 else "")
        + (f", odds {item['champion_odds']}:1)" if item["champion_odds"] else ")")
        for item in cost.get("largest", [])
    )  # fmt: skip
    console.print(f"Neighbour locality lost {cost['total']:.3f} to changed answers: {cost['near_ties']:.3f} through "
                  f"near ties, {cost['other']:.3f} through the others. The largest: {largest}.", soft_wrap=True)  # fmt: skip


def print_gate_failed(outcome) -> None:
    """A failed gate is an outcome, not a crash: the verdict, what it means and what to do next."""
    failures = [item for item in outcome.gate if not item["passed"]]
    console.print(f"[bold red]The gate FAILED[/] on {len(failures)} expectation(s): "
                  + "; ".join(shortfall(item) for item in failures))  # fmt: skip
    changed, ties = (
        outcome.evaluation.get("locality_regressions"),
        outcome.evaluation.get("near_tie_regressions"),
    )
    if changed and ties is not None:  # bleed or noise: what a reviewer of a locality failure asks first
        console.print(f"{changed} unrelated answer(s) changed; {ties} of them near ties (the champion had preferred "
                      "its own answer there by less than 2:1), the rest answers it had given with more confidence.",
                      soft_wrap=True)  # fmt: skip
    _print_neighbour_cost(outcome.evaluation.get("neighbour_locality_cost"))
    console.print("Nothing was registered; the champion is unchanged. This run's flags are marked failed_gate.",
                  soft_wrap=True)  # fmt: skip
    console.print("Next steps:")
    console.print(f"  - read the review (every edit, and which unrelated answers changed): {_review_url(outcome)}",
                  soft_wrap=True)  # fmt: skip
    other = "ft-kl" if outcome.settings.editor != "ft-kl" else "mend"
    console.print("  - retry those flags with another editor or settings: MEND_RETRY_FAILED_GATE=true "
                  f"MEND_EDITOR={other} mend fix", soft_wrap=True)  # fmt: skip
    console.print("  - or relax a threshold on purpose: MEND_GATE_THRESHOLDS=thresholds.json (see README)",
                  soft_wrap=True)  # fmt: skip


def _review_url(outcome) -> str:
    from tasks.registry import registry_client
    from tasks.review import artifact_route, ui_url

    if not outcome.mlflow_run_id:
        return "the fix run's artifact review/review.html in MLflow"
    run = registry_client(outcome.settings.tracking_uri).get_run(outcome.mlflow_run_id)
    return f"{ui_url(outcome.settings)}/#{artifact_route(run.info.experiment_id, outcome.mlflow_run_id)}"


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else format_seconds(seconds)


def _version_line(label: str, info: dict[str, Any] | None) -> str:
    if info is None:
        return f"{label}: none"
    if info["role"] == "base":
        return f"{label}: version {info['version']} (the base model, no edits)"
    gate = {"true": "gate passed", "false": "gate FAILED"}.get(info["gate_passed"] or "", "gate ?")
    approval = f"approved by {info['approved_by']}" if info["approved_by"] else "not approved"
    return f"{label}: version {info['version']} ({info['edits']} edits, {gate}, {approval})"


def print_status(status: dict[str, Any]) -> None:
    console.print(f"[bold]{status['model']}[/]")
    for label in ("champion", "candidate"):
        info = status[label]
        console.print(_version_line(label, info))
        if info and info["gate"]:
            console.print(gate_table(info["gate"], f"{label} gate"))
    run = status["last_fix_run"]
    if run:
        verdict = {
            True: "gate passed",
            False: "gate FAILED",
            None: "no gate (nothing to fix, or it stopped early)",
        }
        console.print(f"last fix run: {run['name']} at {run['started']}, {run['status'].lower()}, "
                      f"{verdict[run['gate_passed']]}")  # fmt: skip
        for item in run["gate"]:
            if not item["passed"]:
                console.print(f"  failed: {shortfall(item)}")
    flags = status["flags"]
    states = ", ".join(f"{name} {count}" for name, count in sorted(flags["by_state"].items())) or "none"
    console.print(f"flags by state: {states}")
    console.print(f"waiting to be fixed: {flags['waiting']} (oldest flagged {_age(flags['oldest_waiting_seconds'])} ago)")  # fmt: skip
    waiting = status["waiting"]
    if not waiting:
        console.print("approvals waiting: none")
    for item in waiting:
        if item["approved_by"]:
            console.print(f"approved, waiting for promotion: version {item['version']} (by {item['approved_by']}): "
                          f"mend promote --version {item['version']}")  # fmt: skip
        else:
            console.print(
                f"waiting for approval: version {item['version']}: mend review --version {item['version']}"
            )
