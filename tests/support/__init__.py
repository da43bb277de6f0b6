"""Helpers shared by unit and e2e tests (local servers, fixtures)."""
