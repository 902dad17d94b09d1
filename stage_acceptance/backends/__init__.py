"""Backends for real instruments, each importable without its vendor library."""
