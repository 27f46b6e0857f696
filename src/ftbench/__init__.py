"""ftbench: GPU inference performance work on transformer models.

Importing ftbench needs no GPU: modules that need CuPy, nvmath or CUTLASS import them
inside the functions that use them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ftbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from ftbench.errors import FtbenchError

__all__ = ["FtbenchError", "__version__"]
