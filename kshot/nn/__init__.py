"""Shared network pieces: backbones (and, later, memory addressing)."""
