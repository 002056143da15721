"""Run the benchmarks and write JSON + Markdown + PNG plots under ``benchmarks/results/``.

python -m benchmarks.run                       # speed, then quality (60-minute editor)
python -m benchmarks.run --suite speed
python -m benchmarks.run --suite quality --train-minutes 60 --eval-records 500
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks import report
from benchmarks.editors import RECIPES, TRAIN_FILE, train_or_reuse

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _machine(device: str) -> dict:
    info = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every benchmark takes: where the data is, the device, and where editors and results go."""
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("MEND_DATA_DIR", "../shared/data"))
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--work", type=Path, default=Path("benchmarks/work"), help="trained editors are kept here"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))


def configure_logging() -> None:
    # force: importing prefect (through tasks/) has already given the root logger its handlers.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=["speed", "quality", "all"], default="all")
    parser.add_argument("--model", default="default")
    add_common_arguments(parser)
    parser.add_argument("--train-minutes", type=float, default=60.0)
    parser.add_argument("--eval-records", type=int, default=500)
    parser.add_argument("--editors", default="unedited,mend,ft,ft-kl")
    parser.add_argument(
        "--recipe", choices=sorted(RECIPES), default="mend-ls", help="the MEND editor (benchmarks.editors)"
    )
    parser.add_argument("--speed-records", type=int, default=10)
    parser.add_argument("--tag", default="", help="suffix for result file names, e.g. 'gpu'")
    args = parser.parse_args(argv)
    configure_logging()

    from editing.core.models import load_model
    from editing.data.records import read_records

    loaded = load_model(args.model, device=args.device)
    suffix = f"-{args.tag}" if args.tag else ""
    args.out.mkdir(parents=True, exist_ok=True)
    header = {"machine": _machine(args.device), "device": args.device, "model": args.model,
              "fingerprint": loaded.fingerprint, "date": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip

    recipe = RECIPES[args.recipe]
    editor_dir = args.work / recipe.name
    if args.suite in ("speed", "all"):
        from benchmarks.speed import edit_latency, training_step_speed
        from editing.training.checkpoint import load_editor

        records = read_records(args.data_dir / TRAIN_FILE, limit=args.speed_records).records
        train_or_reuse(loaded, args.data_dir, args.work, recipe, args.train_minutes, args.device)
        editor = load_editor(editor_dir, base_fingerprint=loaded.fingerprint, device=args.device)
        speed = {**header, "edit_latency": edit_latency(loaded, editor, records, repeats=5),
                 "training_step": training_step_speed(loaded, records, batch_size=8, repeats=5)}  # fmt: skip
        (args.out / f"speed{suffix}.json").write_text(json.dumps(speed, indent=2))
        report.write_speed(speed, args.out, suffix)

    if args.suite in ("quality", "all"):
        from benchmarks.quality import evaluate_editors

        training = train_or_reuse(loaded, args.data_dir, args.work, recipe, args.train_minutes, args.device)
        results = evaluate_editors(
            loaded, args.data_dir, editor_dir, args.editors.split(","), args.eval_records
        )
        rows = {name: result.pop("rows") for name, result in results.items()}
        quality = {**header, "training": training, "eval_records": args.eval_records, "editors": results}
        (args.out / f"quality{suffix}.json").write_text(json.dumps(quality, indent=2, default=float))
        (args.out / f"quality{suffix}-rows.json").write_text(json.dumps(rows, default=str))
        report.write_quality(quality, args.out, suffix)


if __name__ == "__main__":
    main()
