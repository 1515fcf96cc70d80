"""HyperSteer for AxBench: one hypernetwork that turns a steering prompt into a steering vector."""

__version__ = "0.1.0"
