"""Evaluation: span scoring (scoring.py), benchmark loaders (tasks.py), the evaluate mode (run.py)."""
