"""Presenting results: style, palette, HTML, the per-image figures, the dataset report, the terminal summary.

Everything here reads results (tensors handed over by the sweep, or the files a sweep
wrote) and computes no analysis.
"""
