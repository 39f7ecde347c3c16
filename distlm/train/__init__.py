"""Training: the loop, its schedule, metrics and sampling."""
