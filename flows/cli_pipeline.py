"""Pipeline commands of the ``mend`` CLI: flag, fix, demo, promote, rollback, status."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

EXIT_GATE_FAILED = 3  # an expected outcome: the verdict and next steps were printed
EXIT_REFUSED = 4  # promotion refused: gate not passed or no approval


def _settings():
    from tasks.settings import FixSettings

    return FixSettings.from_env()


def _prefect_home() -> None:
    """Keep Prefect's local state (the ephemeral API's database) with the rest of the pipeline's state.

    Prefect creates only the last level of its home, and its ephemeral API cannot open its database
    when that fails, so on a fresh checkout (no ``.mend`` yet) the whole path is made here.
    """
    import click

    from flows.cli_logs import route_logs
    from tasks.tracking import mend_home

    home = Path(os.environ.setdefault("PREFECT_HOME", str(mend_home() / "prefect"))).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    context = click.get_current_context(silent=True)
    route_logs(verbose=bool(context and (context.find_root().obj or {}).get("verbose")))


def _report_fix(outcome) -> None:
    """The fix run's summary; a failed gate adds its verdict and next steps and exits with its own code."""
    from flows.cli_output import print_fix_summary
    from flows.cli_review import print_gate_failed

    print_fix_summary(outcome)
    if outcome.gate_failed:
        print_gate_failed(outcome)
        raise typer.Exit(EXIT_GATE_FAILED)


def _require_promoted_champion(settings) -> None:
    """Night two builds on night one: its candidate must have been approved and promoted first."""
    from tasks.registry import CANDIDATE, alias_version, champion_version, registry_client

    client = registry_client(settings.tracking_uri)
    champion = champion_version(settings.registered_model, tracking_uri=settings.tracking_uri)
    if champion in (None, "1"):
        waiting = alias_version(client, settings.registered_model, CANDIDATE)
        hint = (
            f"mend promote --version {waiting} --approve --approver $USER"
            if waiting
            else "make run (night one) until its gate passes"
        )
        typer.echo(
            f"night 2 builds on night 1's promoted candidate, and the champion is still the base model; first: {hint}"
        )
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command("flag")
    def flag(
        prompt: Annotated[str, typer.Option(help="the input the model answered wrongly")],
        correction: Annotated[str, typer.Option(help="the right answer")],
        prediction: Annotated[str, typer.Option(help="what the model answered")] = "",
        paraphrase: Annotated[
            list[str] | None, typer.Option(help="same question, other words (repeatable)")
        ] = None,
        subject: Annotated[str | None, typer.Option(help="what the fact is about")] = None,
        reason: Annotated[str, typer.Option(help="why it is wrong")] = "wrong answer",
        reporter: Annotated[str, typer.Option(help="who flags it")] = os.environ.get("USER", "cli"),
        model_version: Annotated[
            str | None, typer.Option(help="version that answered (default: champion)")
        ] = None,
    ) -> None:
        """Flag a wrong prediction: append it to the flag log and emit `mend.prediction.flagged`."""
        from tasks.events import flag_prediction

        _prefect_home()
        flag = flag_prediction(
            _settings(), prompt=prompt, correction=correction, prediction=prediction,
            paraphrases=tuple(paraphrase or ()), subject=subject, reason=reason, reporter=reporter,
            model_version=model_version,
        )  # fmt: skip
        typer.echo(f"flagged {flag.flag_id}")

    @app.command("fix")
    def fix() -> None:
        """Run the nightly fix now (ephemeral Prefect unless PREFECT_API_URL points at a server)."""
        from flows.runs import run_fix

        _prefect_home()
        _report_fix(run_fix(_settings()))

    @app.command("demo")
    def demo(
        night: Annotated[
            int, typer.Option(help="1: the main job; 2: other questions, after promoting night 1")
        ] = 1,
    ) -> None:
        """The main job: seed flags from the model's wrong answers, train an editor if none, run the fix."""
        from flows.cli_output import print_seed
        from flows.demo import NIGHTS, seed_demo_flow
        from flows.runs import run_fix

        if night not in NIGHTS:
            raise typer.BadParameter(f"--night must be one of {sorted(NIGHTS)}")
        _prefect_home()
        settings = _settings()
        if night > 1:
            _require_promoted_champion(settings)
        print_seed(seed_demo_flow(night=night))
        _report_fix(run_fix(settings))

    @app.command("promote")
    def promote(
        version: Annotated[str, typer.Option(help="registered model version to promote")],
        approve: Annotated[bool, typer.Option(help="record your approval first")] = False,
        approver: Annotated[str | None, typer.Option(help="who approves / promotes")] = None,
    ) -> None:
        """Move `champion` to VERSION; only for a version whose gate passed and that a person approved."""
        from flows.promote import promote_flow
        from tasks.champion import PromotionRefused

        _prefect_home()
        try:
            record = promote_flow(version=version, approver=approver, approve=approve)
        except PromotionRefused as refused:  # a rule doing its job, not a crash
            typer.echo(f"not promoted: {refused}")
            raise typer.Exit(EXIT_REFUSED) from None
        typer.echo(f"champion is now version {record['version']} (was {record['previous_champion']}), "
                   f"promoted by {record['promoted_by']}; {record['flags_promoted']} flag(s) promoted")  # fmt: skip

    @app.command("rollback")
    def rollback() -> None:
        """Move `champion` back to the previous champion."""
        from flows.promote import rollback_flow

        _prefect_home()
        typer.echo(f"champion is now version {rollback_flow()}")

    @app.command("status")
    def status() -> None:
        """Champion and candidate with their gates, the last fix run, flags by state, approvals waiting."""
        from flows.cli_review import print_status
        from tasks.status import pipeline_status

        print_status(pipeline_status(_settings()))

    @app.command("notify-setup")
    def notify_setup(
        webhook: Annotated[str, typer.Option(help="URL that receives the notices (JSON: subject, text)")],
        name: Annotated[str, typer.Option(help="name of the Prefect webhook block")] = "mend-notify",
    ) -> None:
        """Save a webhook block and the Prefect automations that post failed gates and candidates to approve."""
        from tasks.notify import ensure_automations, save_webhook

        _prefect_home()
        block = save_webhook(name, webhook)
        for automation in ensure_automations(block):
            typer.echo(f"automation {automation!r} -> block {block}")
        typer.echo(f"(for runs on an ephemeral Prefect API instead: export MEND_NOTIFY_BLOCK={block})")

    @app.command("review")
    def review(
        version: Annotated[str, typer.Option(help="registered model version (or alias) to review")],
    ) -> None:
        """Print a candidate's review (the page logged with its fix run) and the URL of its version page."""
        from flows.cli_review import print_review
        from tasks.registry import resolve_version
        from tasks.review import artifact_route, load_review, ui_url, version_page

        settings = _settings()
        found = resolve_version(settings.registered_model, version, tracking_uri=settings.tracking_uri)
        review = load_review(settings, found.run_id) if found.run_id else None
        if review is None:
            typer.echo(f"version {found.version} has no review (the base model, or registered before reviews); "
                       f"its page: {version_page(settings, str(found.version))}")  # fmt: skip
            raise typer.Exit(2)
        page = f"{ui_url(settings)}/#{artifact_route(review['experiment_id'], review['mlflow_run_id'])}"
        print_review(review, str(found.version), version_page(settings, str(found.version)), page)

    @app.command("complete")
    def complete(
        version: Annotated[
            str, typer.Option(help="version number or alias (champion, candidate)")
        ] = "champion",
        prompt: Annotated[list[str] | None, typer.Option(help="prompt to complete (repeatable)")] = None,
    ) -> None:
        """Load a registered version (base + changed tensors, checksum verified) and complete prompts."""
        from editing.core.generate import greedy_complete
        from tasks.models import load_version

        settings = _settings()
        loaded = load_version(settings, version).loaded
        for text, answer in zip(
            prompt or [], greedy_complete(loaded.model, loaded.tokenizer, prompt or []), strict=True
        ):
            typer.echo(f"{text!r} -> {answer!r}")
