"""mpcs: Magnification Prior Contrastive Similarity for histopathology (WACV 2023)."""

__version__ = "0.1.0"

from mpcs.core.errors import CheckpointError, ConfigError, DataError, MpcsError

__all__ = ["__version__", "CheckpointError", "ConfigError", "DataError", "MpcsError"]
