"""Exceptions with messages a user can act on.

Every error raised on bad input names the file, key or stage at fault and says
how to fix it. The CLI prints these without a traceback.
"""


class EsolError(Exception):
    """Base class of every error esol raises on purpose."""


class ConfigError(EsolError, ValueError):
    """An unknown config key, a value of the wrong type, or an invalid preset."""


class DatasetError(EsolError, ValueError):
    """A missing folder or file, a corrupt image, or a mask with labels outside the class set."""


class StageError(EsolError, RuntimeError):
    """A pipeline stage whose inputs are missing (names the stage to run first)."""


class DivergenceError(EsolError, RuntimeError):
    """Training produced a NaN/infinite loss or runaway offsets; the last good checkpoint is kept."""


class WeightsNotFoundError(EsolError, FileNotFoundError):
    """Pretrained weights were asked for but no local file provides them (nothing is downloaded)."""


class MissingDependencyError(EsolError, ImportError):
    """An optional package (pycocotools, scipy) is needed for this command but not installed."""
