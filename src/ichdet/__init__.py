"""ichdet: intracranial hemorrhage detection on head CT.

The library API: one function or class per stage, importable from here. They load lazily, so
``import ichdet`` stays cheap and torch is imported only by what needs it.

    from ichdet import read_slice, window_stack, build_index, prepare, fit, predict
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_API = {
    "read_slice": "ichdet.dicom.read",
    "read_meta": "ichdet.dicom.read",
    "read_hu": "ichdet.dicom.read",
    "DicomError": "ichdet.dicom.read",
    "Slice": "ichdet.dicom.read",
    "apply_window": "ichdet.data.windows",
    "parse_windows": "ichdet.data.windows",
    "window_stack": "ichdet.data.windows",
    "build_index": "ichdet.data.index",
    "read_index": "ichdet.data.index",
    "CacheSettings": "ichdet.data.cache",
    "prepare": "ichdet.data.prepare",
    "SliceDataset": "ichdet.data.dataset",
    "synthesize": "ichdet.synth.studies",
    "plan_reads": "ichdet.selection.choose",
    "SelectionOptions": "ichdet.selection.choose",
    "ModelConfig": "ichdet.models.slice_cnn",
    "build_model": "ichdet.models.slice_cnn",
    "load_checkpoint": "ichdet.models.checkpoint",
    "TrainConfig": "ichdet.training.config",
    "fit": "ichdet.training.slice_task",
    "fit_all": "ichdet.training.cv",
    "SequenceTrainConfig": "ichdet.training.config",
    "fit_sequence": "ichdet.training.sequence_task",
    "load_runner": "ichdet.inference.runners",
    "predict": "ichdet.inference.predict",
    "export_onnx": "ichdet.inference.export",
    "weighted_log_loss": "ichdet.evaluation.metrics",
    "evaluate_files": "ichdet.evaluation.evaluate",
    "LABELS": "ichdet.labels",
}

__all__ = [
    "__version__",
    "read_slice",
    "read_meta",
    "read_hu",
    "DicomError",
    "Slice",
    "apply_window",
    "parse_windows",
    "window_stack",
    "build_index",
    "read_index",
    "CacheSettings",
    "prepare",
    "SliceDataset",
    "synthesize",
    "plan_reads",
    "SelectionOptions",
    "ModelConfig",
    "build_model",
    "load_checkpoint",
    "TrainConfig",
    "fit",
    "fit_all",
    "SequenceTrainConfig",
    "fit_sequence",
    "load_runner",
    "predict",
    "export_onnx",
    "weighted_log_loss",
    "evaluate_files",
    "LABELS",
]

if TYPE_CHECKING:
    from ichdet.data.cache import CacheSettings
    from ichdet.data.dataset import SliceDataset
    from ichdet.data.index import build_index, read_index
    from ichdet.data.prepare import prepare
    from ichdet.data.windows import apply_window, parse_windows, window_stack
    from ichdet.dicom.read import DicomError, Slice, read_hu, read_meta, read_slice
    from ichdet.evaluation.evaluate import evaluate_files
    from ichdet.evaluation.metrics import weighted_log_loss
    from ichdet.inference.export import export_onnx
    from ichdet.inference.predict import predict
    from ichdet.inference.runners import load_runner
    from ichdet.labels import LABELS
    from ichdet.models.checkpoint import load_checkpoint
    from ichdet.models.slice_cnn import ModelConfig, build_model
    from ichdet.selection.choose import SelectionOptions, plan_reads
    from ichdet.synth.studies import synthesize
    from ichdet.training.config import SequenceTrainConfig, TrainConfig
    from ichdet.training.cv import fit_all
    from ichdet.training.sequence_task import fit_sequence
    from ichdet.training.slice_task import fit


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ichdet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
