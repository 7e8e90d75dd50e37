"""Benchmarks: each measures, prints and records (Markdown and JSON under benchmarks/)."""
