"""The ground floor: errors, terminal output, running host programs, host facts, sizes."""
