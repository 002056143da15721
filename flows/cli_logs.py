"""Where the command line's words go: the terminal gets the verdicts, next steps and progress lines; every
log record, tracebacks included, goes to ``$MEND_HOME/logs/mend.log``.

Prefect logs a failed flow with its traceback, and a failed gate is an expected outcome that deserves a
verdict, not a stack. So the pipeline commands take Prefect's (and the root logger's) console handlers
off and log to the file instead; ``--verbose`` keeps them. ``run_app`` turns an unexpected exception
into one line naming the log file and exit status 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from tasks.progress import PROGRESS_LOGGER, RECORD_FIELD

EXIT_UNEXPECTED = 1
_FILE_HANDLER_MARK = "_mend_log_file"


def log_file() -> Path:
    from tasks.tracking import mend_home

    return mend_home() / "logs" / "mend.log"


class ProgressLines(logging.Handler):
    """Progress records as lines on the terminal's error stream (looked up per line: tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, RECORD_FIELD, None) is not None:
            typer.echo(f"  … {record.getMessage()}", err=True)


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    # Exactly these classes: pytest's capture handlers are StreamHandler subclasses and stay.
    return [
        handler
        for handler in logger.handlers
        if type(handler) in (logging.StreamHandler, PrefectConsoleHandler)
    ]


def _log_to_file() -> tuple[Path, logging.Handler]:
    """The root logger writes to this home's log file (replacing another home's, as in tests)."""
    path = log_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _FILE_HANDLER_MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    to_file = logging.FileHandler(path, encoding="utf-8")
    setattr(to_file, _FILE_HANDLER_MARK, True)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(to_file)
    root.setLevel(logging.INFO)
    return path, to_file


def route_logs(verbose: bool = False) -> Path:
    """Send log records to the log file (and, unless ``verbose``, not to the terminal); show progress."""
    from prefect import flow  # noqa: F401  (Prefect sets up its logging on this import; re-pointed below)

    path, to_file = _log_to_file()
    root = logging.getLogger()
    logging.captureWarnings(True)  # library warnings (transformers, torch) are log lines too
    if not verbose:
        loggers = [root, *(logging.getLogger(name) for name in list(logging.root.manager.loggerDict))]
        for logger in loggers:
            for handler in _console_handlers(logger):
                logger.removeHandler(handler)
            if logger is not root and not logger.propagate and logger.name.startswith(("uvicorn", "fastapi")):
                logger.addHandler(to_file)
    progress = logging.getLogger(PROGRESS_LOGGER)
    progress.setLevel(logging.INFO)
    for handler in [h for h in progress.handlers if isinstance(h, ProgressLines)]:
        progress.removeHandler(handler)
    progress.addHandler(ProgressLines())
    return path


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else 'no message'}"


def run_app(app: typer.Typer) -> None:
    """Run the command line; an unexpected exception becomes one line on stderr and exit status 1."""
    try:
        app()
    except Exception as error:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if type(h) is logging.StreamHandler]:
            root.removeHandler(handler)  # the traceback goes to the file only, even before route_logs ran
        _log_to_file()
        logging.getLogger("mend").exception("mend %s failed", " ".join(sys.argv[1:]))
        typer.echo(f"mend: failed: {one_line(error)}", err=True)
        typer.echo(f"      the details and the traceback are in {log_file()}", err=True)
        raise SystemExit(EXIT_UNEXPECTED) from None
