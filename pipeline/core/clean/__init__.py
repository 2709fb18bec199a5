"""The cleaning stage: vectorised checks that keep, repair or drop every reading with a reason."""

from pipeline.core.clean.cleaner import REASONS, Cleaner, CleanResult
from pipeline.core.clean.config import CleaningConfig, load_cleaning_config, parse_cleaning_config

__all__ = ["REASONS", "CleanResult", "Cleaner", "CleaningConfig", "load_cleaning_config",
           "parse_cleaning_config"]
