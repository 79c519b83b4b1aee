"""metadask benchmarks: each case prints a table and writes JSON under benchmarks/results/."""
