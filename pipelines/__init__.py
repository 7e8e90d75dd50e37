"""Batch jobs: simulate, build features and training sets, train, evaluate, benchmark. Each runs from the CLI."""
