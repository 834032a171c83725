"""Benchmarks: each script prints a markdown table and saves JSON under bench/results/."""
