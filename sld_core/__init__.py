"""Swapped Logit Distillation, written once against the Python array API."""

__version__ = "0.1.0"
