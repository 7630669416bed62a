"""Cairn: a distributed, content-addressed, erasure-coded storage cluster."""

__version__ = "0.1.0"
