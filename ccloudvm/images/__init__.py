"""Base images: definitions, download and verification, local builds, the cache."""
