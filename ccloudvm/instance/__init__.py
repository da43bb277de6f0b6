"""An instance's lifecycle: create, start, stop, delete, status, suspend, snapshots."""
