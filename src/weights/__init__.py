"""Weights on disk: this project's checkpoints (checkpoint.py) and foreign ones mapped into our parameter names, each
with a load report (report.py). Sits just above models: it may build models, never tasks, engine or inference."""
