"""A DICOMweb server as a source and a destination: QIDO-RS, WADO-RS and STOW-RS through
``dicomweb-client`` (``pip install 'ichdet[dicomweb]'``), with a bearer token and retries.

The URL is given as ``dicomweb+https://HOST/dicom-web`` (``dicomweb+http://`` on a trusted
network only): the prefix tells it from a folder. The token comes from a file (readable by
its owner alone) or from ``$ICHDET_DICOMWEB_TOKEN``; it is sent as ``Authorization: Bearer``
and never printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ichdet.util.secrets import read_private

PREFIX = "dicomweb+"
TOKEN_ENV = "ICHDET_DICOMWEB_TOKEN"
INSTALL_HINT = "DICOMweb needs dicomweb-client: pip install 'ichdet[dicomweb]'"
#: Retries of a request that failed to connect or got 429/5xx, with back-off 0.5, 1, 2, 4 s...
RETRIES = 5
BACKOFF_S = 0.5
RETRY_STATUS = (429, 500, 502, 503, 504)
TIMEOUT_S = (10.0, 120.0)  #: connect, read


def is_dicomweb(text: str) -> bool:
    return str(text).startswith(PREFIX)


@dataclass(frozen=True)
class DicomwebServer:
    """Where a DICOMweb service is and how to reach it (picklable: worker processes and Ray
    tasks make their own client from it)."""

    url: str  #: the service root, e.g. https://pacs.example.org/dicom-web
    token: str | None = field(default=None, repr=False)
    retries: int = RETRIES

    def client(self) -> Any:
        try:
            from dicomweb_client import DICOMwebClient
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return DICOMwebClient(
            self.url, session=_session(self.retries), headers=headers, timeout=TIMEOUT_S
        )


def _session(retries: int) -> Any:
    """A requests session that retries connection errors and 429/5xx with back-off
    (honouring Retry-After), for every method: QIDO/WADO are reads and a STOW of the same
    instances again stores the same SOP Instance UIDs."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=retries,
        backoff_factor=BACKOFF_S,
        status_forcelist=RETRY_STATUS,
        allowed_methods=None,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def parse_server(text: str, token_file: Path | None = None) -> DicomwebServer:
    """``dicomweb+https://HOST/PATH`` -> the server, with its token (``token_file``, else
    ``$ICHDET_DICOMWEB_TOKEN``, else none). ValueError on anything else."""
    if not is_dicomweb(text):
        raise ValueError(f"{text!r}: a DICOMweb source starts with {PREFIX}http(s)://")
    url = text[len(PREFIX) :].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r}: not dicomweb+http(s)://HOST/PATH")
    if parts.username or parts.password:
        raise ValueError(f"{text!r}: no credentials in the URL; use --token-file")
    return DicomwebServer(url, read_token(token_file))


def read_token(path: Path | None) -> str | None:
    """The bearer token of ``path`` (refused when others may read it), or of
    ``$ICHDET_DICOMWEB_TOKEN``, or None."""
    if path is None:
        return os.environ.get(TOKEN_ENV) or None
    token = read_private(path)
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"{path}: not a token (empty, or holds spaces)")
    return token
