"""Experiments: scripts that train and evaluate models to reproduce a paper's tables, writing ``results/`` files.

Each experiment module exposes plain functions (called by the book) and a ``python -m`` entry point.
"""
