"""bwc-agent: the edge agent for body-worn camera docking stations."""

__version__ = "0.1.0"
