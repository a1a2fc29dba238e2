"""Logging for the command line and the workers: one format, and libraries kept quiet."""

from __future__ import annotations

import logging

from aiohttp.http_exceptions import HttpProcessingError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
_RAW_BYTES = ("b'", 'b"')


def configure_logging(level: str | int, log_format: str = FORMAT) -> None:
    logging.basicConfig(level=level, format=log_format)
    # fontTools logs every glyph set it subsets at INFO: dozens of lines per receipt PDF.
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs every request its parser refuses (a 400 before any handler runs) as an
    ERROR with a traceback and the offending header line: anyone could fill the log with
    them, and a token in a malformed ``Authorization`` header was written out. Such a
    refusal becomes one INFO line naming the client and the parser's reason, without the
    bytes it quoted. Other errors of the server pass as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        refused = record.exc_info[1] if record.exc_info else None
        if isinstance(refused, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed HTTP request from %s (%d): %s"
            record.args = (remote, refused.code, _reason(refused.message))
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def _reason(message: str) -> str:
    """The parser's first line, cut before any bytes of the request it quotes."""
    first = message.strip().splitlines()[0] if message.strip() else "malformed request"
    cuts = [at for at in (first.find(quote) for quote in _RAW_BYTES) if at >= 0]
    return first[: min(cuts)].rstrip(" :") if cuts else first.rstrip(" :")
