"""Planner and estimators (pure Python: never imports torch)."""
