"""Workload definitions (YAML with inheritance) and their sandboxed templates."""
