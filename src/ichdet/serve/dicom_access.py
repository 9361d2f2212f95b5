"""The DICOM door: who may associate with the listener, over what, and how much it may send.

- **Peers**: an allow list of calling AE titles, each optionally bound to a host
  (``--allow PACS@10.0.0.5``, repeatable, or a file with one entry per line). An association
  from a peer not on it is rejected (A-ASSOCIATE-RJ, permanent, "calling AE title not
  recognised"); one that calls another AE title than the listener's is rejected as "called AE
  title not recognised". Rejections are logged with the AE title and address only.
- **TLS** (optional): the listener's certificate and key, and with a CA, mutual TLS (the peer
  must present a certificate signed by it).
- **Limits**: associations at once, the ACSE timeout (an idle TCP connection that sends no
  association request is dropped after it), the DIMSE and network timeouts, the largest
  instance, the most instances per study and the free disk space kept.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("ichdet.serve")
REJECT_PERMANENT, SOURCE_USER = 0x01, 0x01
CALLING_NOT_RECOGNISED, CALLED_NOT_RECOGNISED = 0x03, 0x07


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str | None = None  # an address or a name (resolved once); None: any host

    @classmethod
    def parse(cls, text: str) -> Peer:
        """``AET`` or ``AET@HOST``."""
        aet, _, host = text.strip().partition("@")
        if not aet or len(aet) > 16 or "\\" in aet:
            raise ValueError(f"{text!r}: expected AET or AET@HOST (AE title of 1-16 characters)")
        return cls(aet, host or None)

    def addresses(self) -> set[str]:
        if self.host is None:
            return set()
        try:
            return {str(ipaddress.ip_address(self.host))}
        except ValueError:
            infos = socket.getaddrinfo(self.host, None)
            return {str(info[4][0]) for info in infos}


@dataclass(frozen=True)
class DicomLimits:
    max_instance_bytes: int = 1 * 2**30
    max_instances_per_study: int = 20_000
    min_free_bytes: int = 1 * 2**30
    max_associations: int = 10
    acse_timeout: float = 5.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0


@dataclass
class DicomAccess:
    peers: list[Peer] = field(default_factory=list)
    allow_any: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    limits: DicomLimits = field(default_factory=DicomLimits)

    def __post_init__(self) -> None:
        self._allowed = [(p.ae_title, p.addresses()) for p in self.peers]

    def allows(self, calling_aet: str, address: str) -> bool:
        if self.allow_any:
            return True
        return any(
            aet == calling_aet and (not hosts or address in hosts) for aet, hosts in self._allowed
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.tls_ca is not None:
            context.load_verify_locations(self.tls_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def read_peers(entries: list[str], file: Path | None = None) -> list[Peer]:
    """``--allow`` entries and the lines of ``file`` (``#`` comments, blank lines skipped)."""
    lines = list(entries)
    if file is not None:
        lines += [line.split("#")[0] for line in file.read_text().splitlines()]
    return [Peer.parse(line) for line in lines if line.strip()]


def check_association(event: Any, access: DicomAccess, own_title: str) -> None:
    """The EVT_REQUESTED handler: reject the association of a peer that is not allowed, or
    that calls another AE title, before anything is negotiated."""
    primitive = event.assoc.requestor.primitive
    calling = str(primitive.calling_ae_title).strip()
    called = str(primitive.called_ae_title).strip()
    address = str(event.assoc.requestor.address)
    if called != own_title.strip():
        reason = CALLED_NOT_RECOGNISED
    elif not access.allows(calling, address):
        reason = CALLING_NOT_RECOGNISED
    else:
        return
    log.warning("DICOM association rejected: %r@%s called %r", calling[:16], address, called[:16])
    event.assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_USER, reason)
    event.assoc.kill()


def parse_limits(entries: list[str]) -> DicomLimits:
    """``--dicom-limit KEY=VALUE`` entries (sizes in MB) over the defaults."""
    values: dict[str, Any] = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        key = key.strip()
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--dicom-limit {entry!r}: expected KEY=NUMBER") from None
        if key.endswith("_mb"):
            key, number = key[:-3] + "_bytes", number * 2**20
        if key not in DicomLimits.__dataclass_fields__ or number < 0:
            raise ValueError(f"--dicom-limit {entry!r}: unknown key or negative value")
        values[key] = number if "timeout" in key else int(number)
    return replace(DicomLimits(), **values)
