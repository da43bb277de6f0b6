"""The command line: click commands, output formats, shell completion."""
