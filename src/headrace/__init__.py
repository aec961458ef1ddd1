"""headrace: streams training data into machine-learning training loops, fast and exactly resumable.

>>> import headrace as hr
>>> {"open", "Loader", "Pipeline"} <= set(hr.__all__)
True
"""

from headrace.agree import AgreementError, FileAgreement
from headrace.config import ConfigError, Pipeline
from headrace.core.errors import (
    HeadraceError,
    LoaderTimeout,
    RecordError,
    SchemaError,
    SourceError,
    StateError,
    WorkerError,
)
from headrace.core.rng import rng
from headrace.core.world import World
from headrace.io.retry import Retry
from headrace.loader import Loader
from headrace.pipeline import Dataset
from headrace.sources import from_hf, mix, open  # noqa: A004 - hr.open is the public entry point

__version__ = "0.1.0"

__all__ = [
    "AgreementError",
    "ConfigError",
    "Dataset",
    "FileAgreement",
    "HeadraceError",
    "Loader",
    "LoaderTimeout",
    "Pipeline",
    "RecordError",
    "Retry",
    "SchemaError",
    "SourceError",
    "StateError",
    "WorkerError",
    "World",
    "from_hf",
    "mix",
    "open",
    "rng",
]
