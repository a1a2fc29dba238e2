"""Logging for the command line and the workers: one format, and libraries kept quiet."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def configure_logging(level: str | int, log_format: str = FORMAT) -> None:
    logging.basicConfig(level=level, format=log_format)
    # fontTools logs every glyph set it subsets at INFO: dozens of lines per receipt PDF.
    logging.getLogger("fontTools").setLevel(logging.WARNING)
