"""Helpers every stage may use: atomic writes, JSON files, process pools, progress bars."""
