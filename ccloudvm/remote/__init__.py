"""Targets commands run on: a guest over SSH, the host itself; file transfer."""
