"""Trained models at work: runners (torch checkpoints or ONNX Runtime), ``predict`` (per slice,
per study, Kaggle submission), ONNX ``export``, and the inference benchmark."""
