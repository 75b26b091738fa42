"""HTTP: Slicer's REST API on FastAPI. Routes map requests to typed daemon calls and back, nothing more."""
