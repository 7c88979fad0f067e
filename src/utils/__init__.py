"""Leaf helpers every layer may use: atomic file writes, result tables. They import nothing from src but errors."""
