"""From DICOMs to training samples: windows, the index (one row per image, z order, folds), the
prepared cache, the torch dataset of window stacks, and batch augmentation.

Modules here import no torch except ``dataset`` and ``augment``, so indexing and preparing
(and their worker processes) start fast.
"""
