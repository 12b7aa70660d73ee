"""Thin adapters that translate a framework's training events into trainprov capture calls."""
