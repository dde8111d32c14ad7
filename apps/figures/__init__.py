"""Regenerates the paper's Fig. 2a-c and Table I from run directories (``python -m apps.figures``)."""
