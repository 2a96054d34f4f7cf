"""The network graph: backbones and the multi-head model (no file access)."""
