"""ccloudvm: a development environment, or a whole cluster, inside one VM."""

__version__ = "0.1.0"
