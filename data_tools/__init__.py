"""Thin command-line entry points over `distlm.data`: tokenizer, pretokenize, inspect, demo_data."""
