"""reductio: map-reduce over SSH for people who deploy Python with Fabric.

Kept cheap to import: workers import this package for every step.
"""

__version__ = "1.0.0.dev0"

from reductio.errors import ReductioError  # noqa: E402

__all__ = ["ReductioError", "__version__"]
