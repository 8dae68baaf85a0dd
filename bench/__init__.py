"""Throughput and parity harness (library code, called from the CLI)."""
