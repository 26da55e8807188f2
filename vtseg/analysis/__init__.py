"""Logic behind the command-line tools: FLOPs, benchmarks, attention capture."""
