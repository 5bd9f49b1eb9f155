"""Figures, summaries and reports. Reads only saved results (``layers.csv``, ``run.json``)."""
