"""Reproducible speed measurements; see README, "Performance"."""
