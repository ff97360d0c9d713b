"""Benchmarks: speed figures with the machine and command, not tests."""
