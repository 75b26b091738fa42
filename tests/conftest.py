import os
from pathlib import Path

# One guest image per machine, shared by every test that needs one; rebuilt only when its inputs change.
IMAGE_CACHE = Path(os.environ.get("PYSLICER_TEST_IMAGE_CACHE", "/var/tmp/pyslicer-test-images"))
