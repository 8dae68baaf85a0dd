"""Orchestration and I/O: data, SAM3 adapter, pipeline, store, figures, report."""
