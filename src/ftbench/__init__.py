"""ftbench: GPU inference performance work on transformer models.

Importing ftbench needs no GPU: modules that need CuPy, nvmath or CUTLASS import them
inside the functions that use them.
"""

from ftbench.errors import FtbenchError

__version__ = "0.1.0"

__all__ = ["FtbenchError", "__version__"]
