"""pyshim: a containerd runtime v2 shim and container monitor in Python."""

__version__ = "0.1.0"
