"""ichdet: intracranial hemorrhage detection on head CT."""

__version__ = "0.1.0"
