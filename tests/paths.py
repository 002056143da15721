"""Where the public editing benchmarks are: ``$MEND_DATA_DIR``, else ``../shared/data`` beside the project."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("MEND_DATA_DIR") or PROJECT.parent / "shared" / "data")
