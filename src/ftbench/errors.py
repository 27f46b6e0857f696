"""The one error family. The CLI prints any of these as a one-line message and exits non-zero."""


class FtbenchError(Exception):
    """Base of every error a user can act on; the message says what to do."""


class NoGpuError(FtbenchError):
    """A GPU (or CuPy) is needed for this operation and none is usable."""


class InvalidInputError(FtbenchError):
    """A file, option or argument is malformed or inconsistent."""


class MeasurementError(FtbenchError):
    """A measurement could not be taken (capture failed, kernel error, bad timing setup)."""


class GpuError(FtbenchError):
    """A CUDA kernel or library call failed."""
