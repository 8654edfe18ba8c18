"""mgr: music genre recognition as distributed batch jobs on Ray."""
__version__ = "0.1.0"
