"""Runnable benchmarks; each writes JSON + Markdown under benchmarks/results/."""
