"""Benchmarks of the openai_batch pipeline: ``python -m bench [--smoke] [--scale F] [--only NAME,...]``."""
