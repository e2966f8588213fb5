"""Writing a benchmark's JSON under benchmarks/results/: whole or not at all (a temporary file
beside it, then a rename), so an interrupted run never leaves half a results file."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_results(path: Path, payload: dict, **dumps) -> None:
    """`payload` as indented JSON at `path` (`dumps`: json.dumps's options, e.g. sort_keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, **dumps) + "\n")
    os.replace(tmp, path)
