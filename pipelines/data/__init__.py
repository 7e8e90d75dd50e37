"""Where histories come from: the simulator, imported files, Parquet, and the store's warm start."""
