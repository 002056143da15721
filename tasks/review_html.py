"""The review as one HTML page: inline CSS, plots as data URIs, no scripts, fonts or other files, so the
MLflow UI's artifact viewer (a sandboxed frame) shows it as it is, and it stays readable on a laptop.

Every value from a flag or a model answer is escaped: prompts are user input.
"""

from __future__ import annotations

from html import escape
from typing import Any

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px 24px;color:#1d232b;max-width:1280px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 8px;border-bottom:1px solid #d7dce2}
.meta{color:#5a6572;font-size:13px}.verdict{padding:10px 14px;border-radius:6px;font-size:17px;
font-weight:600;margin:12px 0}.passed{background:#e3f4e6;color:#17692a}.failed{background:#fbe7e7;color:#a4161a}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border:1px solid #d7dce2;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#f2f4f7}.ok{color:#17692a}.bad{color:#a4161a;font-weight:600}
.num{text-align:right;white-space:nowrap}.small{color:#5a6572;font-size:12px}ul{margin:0;padding-left:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #d7dce2;border-radius:6px;padding:8px 12px;
min-width:150px}.card b{display:block;font-size:18px}img{max-width:100%;border:1px solid #d7dce2}
code{background:#f2f4f7;padding:1px 4px;border-radius:3px}
"""


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else escape(str(value))


def _mark(passed: bool | None, applicable: bool = True) -> str:
    if not applicable:
        return '<span class="small">n/a</span>'
    return '<span class="ok">pass</span>' if passed else '<span class="bad">FAIL</span>'


def _gate(review: dict[str, Any]) -> str:
    gate = review["gate"]
    passed = gate.get("passed")
    verdict = {True: "Gate PASSED", False: "Gate FAILED", None: "Gate not run"}[passed]
    expectations = gate.get("expectations", [])
    # The thresholds (and anything failing) up front; the evaluation table's passed data checks folded.
    shown = [item for item in expectations if item.get("threshold") is not None or not item["passed"]]
    folded = [item for item in expectations if item not in shown]
    header = "<tr><th>expectation</th><th>result</th><th>observed</th><th>threshold</th><th>why it matters</th></tr>"
    table = f'<table id="gate">{header}{_gate_rows(shown)}</table>'
    if folded:
        table += (f"<details><summary class='small'>{len(folded)} data checks of the evaluation table, all "
                  f"passed</summary><table>{header}{_gate_rows(folded)}</table></details>")  # fmt: skip
    return f'<div id="verdict" class="verdict {"passed" if passed else "failed"}">{verdict}</div>{table}'


def _gate_rows(items: list[dict[str, Any]]) -> str:
    return "".join(
        f"<tr><td>{escape(item['name'])}</td><td>{_mark(item['passed'], item.get('applicable', True))}</td>"
        f'<td class="num">{_number(item.get("observed"))}</td><td class="num">{_number(item.get("threshold"))}'
        f'</td><td class="small">{escape(item.get("reason") or "")}</td></tr>'
        for item in items
    )


def _cost_cards(cost: dict[str, Any] | None) -> list[tuple[str, str]]:
    """What changed answers took off the neighbour locality mean, and how much of it near ties (runs
    evaluated before the split existed have none)."""
    if not cost:
        return []
    return [
        ("neighbour locality lost to changed answers", _number(cost.get("total"))),
        ("of it through near ties", _number(cost.get("near_ties"))),
    ]


def _cards(summary: dict[str, Any]) -> str:
    change = summary.get("perplexity_change")
    retention = summary.get("retention")
    cards = [
        ("edits", _number(summary.get("edits"))),
        ("perplexity", f"{_number(summary.get('perplexity_before'), 2)} → {_number(summary.get('perplexity_after'), 2)}"
         f" ({'-' if change is None else f'{change:+.1%}'})"),
        ("retention of promoted edits", "no earlier edits" if not summary.get("retained_edits")
         else f"{_number(retention)} of {summary['retained_edits']}"),
        ("locality answers changed", _number(summary.get("locality_regressions"))),
        ("of them the edited subjects' other facts", _number(summary.get("same_subject_regressions"))),
        ("of them near ties (the champion's odds < 2:1)", _number(summary.get("near_tie_regressions"))),
        *_cost_cards(summary.get("neighbour_locality_cost")),
    ]  # fmt: skip
    return (
        '<div class="cards">'
        + "".join(f"<div class='card'>{escape(n)}<b>{v}</b></div>" for n, v in cards)
        + "</div>"
    )


def _tick(correct: bool | None) -> str:
    return "" if correct is None else ("<span class=ok>✓</span>" if correct else "<span class=bad>✗</span>")


def _paraphrases(row: dict[str, Any]) -> str:
    items = "".join(
        f"<li>{escape(p['prompt'])} → <i>{escape(p['answer'])}</i> {_tick(p['correct'])}</li>"
        for p in row.get("paraphrases", [])
    )
    score = f'<div class="small">score {_number(row.get("paraphrase_success"))}</div>'
    return (f"<ul>{items}</ul>" if items else '<span class="small">none</span>') + score


def _flag(row: dict[str, Any]) -> str:
    flag = row.get("flag") or {}
    return (
        f"{escape(str(flag.get('reporter') or '?'))}<div class='small'>{escape(str(flag.get('flagged_at') or ''))}"
        f"<br>{escape(str(flag.get('reason') or ''))}<br><code>{escape(row['record_id'][:12])}</code></div>"
    )


def _edits(review: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{escape(row['prompt'])}</td><td>{escape(row.get('answer_before') or '')}</td>"
        f"<td>{escape(row.get('answer_after') or '')} {_tick(row.get('answer_correct'))}<div class='small'>wanted: "
        f"{escape(row['correction'])}</div></td><td class='num'>{_number(row.get('edit_success'))}</td>"
        f"<td>{_paraphrases(row)}</td>"
        f"<td class='num'>{_number(row.get('locality_unchanged'))}</td>"
        f"<td class='num'>{_number(row.get('locality_same_subject'))}</td><td>{_flag(row)}</td></tr>"
        for row in review["edits"]
    )
    return (
        '<table id="edits"><tr><th>prompt</th><th>old answer</th><th>new answer</th><th>edit success</th>'
        "<th>paraphrases (answer after the edit)</th><th>locality unchanged (other subjects)</th>"
        "<th>same subject's other facts unchanged</th><th>flagged by</th></tr>"
        "<caption class='small' style='caption-side:bottom;text-align:left'>Answers are the models' greedy "
        "completions; edit success, the paraphrase score and locality are the gate's teacher-forced "
        "measures.</caption>"
        f"{rows}</table>"
    )


def _regressions(review: dict[str, Any]) -> str:
    if not review["regressions"]:
        return "<p>No locality answer changed.</p>"
    rows = "".join(
        f"<tr><td>{escape(r['prompt'])}</td><td>{escape(r.get('kind', ''))}</td><td>{escape(r['before'])}</td>"
        f"<td>{escape(r['after'])}</td><td>{_odds(r)}</td><td>{_cost(r)}</td>"
        f"<td><code>{escape(r['edit'][:12])}</code></td></tr>"
        for r in review["regressions"]
    )
    return (
        '<table id="regressions"><tr><th>locality prompt</th><th>kind</th><th>answer before</th>'
        "<th>answer after</th><th>champion's odds where they part</th>"
        "<th>taken off the gate's locality mean</th><th>beside edit</th></tr>"
        f"{rows}</table>"
    )


def _cost(regression: dict[str, Any]) -> str:
    """What the change takes off its gate column's mean; 0 where it lies past the answer the gate scores.
    Runs evaluated before the column existed show a dash."""
    cost = regression.get("gate_cost")
    if cost in (None, ""):
        return "-"
    return f"{float(cost):.4f}" if float(cost) else "0"


def _odds(regression: dict[str, Any]) -> str:
    """The champion's odds for its own answer where the two answers part; near ties are marked. Runs
    evaluated before the column existed show a dash."""
    odds = regression.get("champion_odds") or ""
    if not odds:
        return "-"
    return f"{escape(odds)}:1" + (" <b>near tie</b>" if regression.get("near_tie") == "yes" else "")


def _plots(review: dict[str, Any]) -> str:
    return "".join(
        f'<figure><img alt="{escape(name)}" src="{uri}"><figcaption class="small">{escape(name)}</figcaption></figure>'
        for name, uri in review["plots"].items()
    )


def render_review(review: dict[str, Any]) -> str:
    """The whole page as one string."""
    editor = review.get("editor_uri") or review.get("editor") or "?"
    meta = (
        f"{escape(review['model'])} · on champion version {escape(str(review.get('champion_version')))} · "
        f"editor <code>{escape(str(editor))}</code> · fix run <code>{escape(review['run_id'])}</code> · "
        f"MLflow run <code>{escape(str(review.get('mlflow_run_id', '')))}</code>"
    )
    counts = ", ".join(f"{escape(k)} {escape(str(v))}" for k, v in (review.get("counts") or {}).items())
    approve = (
        "<p>To approve, open this version in the MLflow UI (Models → the model → the version), add the tag "
        "<code>approved_by</code> with your name, then run <code>mend promote --version N</code>; or in one "
        "step <code>mend promote --version N --approve --approver NAME</code>. A version whose gate failed "
        "cannot be approved.</p>"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Review: {escape(review['model'])} fix run {escape(review['run_id'][:8])}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>Review of a fix run</h1><div class='meta'>{meta}</div>"
        f"<div class='meta'>flags: {counts or '-'}</div>{_gate(review)}"
        f"<h2>At a glance</h2>{_cards(review['summary'])}"
        f"<h2>Edits ({len(review['edits'])})</h2>{_edits(review)}"
        f"<h2>Locality regressions ({len(review['regressions'])})</h2>{_regressions(review)}"
        f"<h2>Plots</h2>{_plots(review)}<h2>Approving</h2>{approve}</body></html>"
    )
