"""Evaluation runners, one module per task, each with main(argv) (dispatched by eval.py --task)."""
