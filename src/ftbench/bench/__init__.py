"""The measurement core: timer, statistics, GPU state, the environment record, result files."""
