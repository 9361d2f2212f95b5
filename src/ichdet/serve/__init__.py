"""``ichdet serve``: a REST service and a web page over a trained model (FastAPI, SQLite)."""
