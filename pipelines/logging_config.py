"""The `logging` section of the config: `LoggingConfig` (the setup is `data_ingestion.log_setup`).

Example::

    "logging": {"level": "INFO", "format": "json",
                "loggers": {"connectors.opcua": "DEBUG"}}
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from typed_config import check_name, join_path

__all__ = ["LOG_LEVELS", "LogFormat", "LogLevel", "LoggingConfig"]

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LogFormat = Literal["text", "json"]

DEFAULT_LEVEL: LogLevel = "INFO"
DEFAULT_FORMAT: LogFormat = "text"


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """The `logging` section: root level, output format, levels by logger name."""

    level: LogLevel = DEFAULT_LEVEL
    format: LogFormat = DEFAULT_FORMAT
    loggers: dict[str, LogLevel] = dataclasses.field(default_factory=dict)

    def validate(self, path: str) -> list[str]:
        errors = []
        for name in self.loggers:
            # Logger names are dotted module paths: `connectors.opcua`.
            errors += check_name(join_path(join_path(path, "loggers"), name), name)
        return errors
