"""Patient data at rest and in logs, for a service process.

- Files and folders the service writes are its owner's only (umask 077; atomic writes 0600).
- The token file must be readable by its owner only and hold at least 32 characters.
- No header value reaches a log line: pydicom's log records and warnings (which quote the
  offending value, a UID or a name) are replaced by a line that says only that one was withheld,
  and uvicorn's access log drops query strings (a worklist search is a patient's name).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ichdet.util.atomic import use_private_files
from ichdet.util.secrets import read_private

MIN_TOKEN_LENGTH = 32
WITHHELD = "a warning was withheld (it may quote DICOM header values)"


class TokenError(ValueError):
    pass


def read_token(path: Path) -> str:
    """The bearer token in ``path``; refused when others may read it or it is too short."""
    try:
        token = read_private(path)
    except ValueError as exc:
        raise TokenError(str(exc)) from None
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(
            f"{path}: a token of at least {MIN_TOKEN_LENGTH} characters is needed "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return token


class WithholdHeaderValues(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = WITHHELD, ()
        return True


class NoQueryStrings(logging.Filter):
    """uvicorn's access log line without the query string of the request."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].split("?")[0], *args[3:])
        return True


def protect_process() -> None:
    """What a service process sets at start, before it writes or logs anything."""
    use_private_files()
    logging.captureWarnings(True)
    for name in ("pydicom", "py.warnings"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, WithholdHeaderValues) for f in logger.filters):
            logger.addFilter(WithholdHeaderValues())
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, NoQueryStrings) for f in access.filters):
        access.addFilter(NoQueryStrings())
