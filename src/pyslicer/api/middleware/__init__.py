"""Plain ASGI middleware (streams pass through untouched), one a file."""

from pyslicer.api.middleware.auth import BearerAuth
from pyslicer.api.middleware.metrics import RequestMetrics
from pyslicer.api.middleware.query_in_path import QueryInPath

__all__ = ["BearerAuth", "QueryInPath", "RequestMetrics"]
