"""Serving: Triton server management and Python-backend model code."""
