"""The cleaning stage: vectorised checks that keep, repair or drop every reading with a reason.

One module per check (`signals`, `clock`, `timestamps`, `duplicates`, `ranges`, `spikes`,
`gps`, `rates`, `stuck`), run in that order by `cleaner.Cleaner`; `outcomes` holds the
reason codes, `rows` the sorted batch the group-wise checks share, `state` the history per
vehicle, `config` the validated `rules/cleaning.yaml`.
"""

from pipeline.core.clean.cleaner import Cleaner
from pipeline.core.clean.config import CleaningConfig, load_cleaning_config, parse_cleaning_config
from pipeline.core.clean.outcomes import REASONS, CleanResult

__all__ = ["REASONS", "CleanResult", "Cleaner", "CleaningConfig", "load_cleaning_config",
           "parse_cleaning_config"]
