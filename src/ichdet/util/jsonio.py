"""JSON files written atomically, with numpy scalars and paths made plain."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ichdet.util.atomic import write_text


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def strict(value: Any) -> Any:
    """``value`` with every NaN float as None: strict JSON, which other tools can read."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
