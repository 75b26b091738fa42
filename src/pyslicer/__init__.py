"""pyslicer: real micro-VMs behind Slicer's REST API.

This module stays import-free: the in-guest agent ships a copy of the package root.
"""

__version__ = "0.1.0"
