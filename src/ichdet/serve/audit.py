"""The audit log: who read or changed which study, when - what a hospital's privacy officer
asks for. One row per event in the store's database (the ``audit`` table): the time, the actor
(``token:<hash>`` of the bearer token that was used, ``local`` for the loopback service without
a token, ``aet:<AE title>@<host>`` for a DICOM peer, ``server:<id>`` for the service itself),
the action and the internal study id. The table is read with SQL or ``GET /api/v1/audit``."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from sqlalchemy import Float, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from ichdet.serve.store import Base, Store


class AuditEvent(Base):
    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    study_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)


def token_actor(token: str) -> str:
    """A token's name in the log: a short hash, never the token."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


#: reads repeated by the same actor within this many seconds are one event (a page that polls
#: the worklist every 2 s, a client polling a study's status, is not a row per request)
REPEAT_SECONDS = 60.0
READS = ("view", "worklist", "report")


class Audit:
    def __init__(self, store: Store):
        self.engine = store.engine
        AuditEvent.__table__.create(self.engine, checkfirst=True)  # type: ignore[attr-defined]
        self.last: dict[tuple[str, str, str | None], float] = {}

    def record(self, actor: str, action: str, study_id: str | None = None) -> None:
        now = time.monotonic()
        if action in READS:
            key = (actor, action, study_id)
            if now - self.last.get(key, -REPEAT_SECONDS) < REPEAT_SECONDS:
                return
            if len(self.last) > 10_000:
                self.last.clear()
            self.last[key] = now
        with Session(self.engine) as s, s.begin():
            self.add(s, actor, action, study_id)

    @staticmethod
    def add(session: Session, actor: str, action: str, study_id: str | None = None) -> None:
        """The event, in a transaction the caller commits (with the change it records)."""
        event = AuditEvent(time=time.time(), actor=actor[:100], action=action, study_id=study_id)
        session.add(event)

    def events(
        self, study_id: str | None = None, action: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
        if study_id is not None:
            query = query.where(AuditEvent.study_id == study_id)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        with Session(self.engine) as s:
            return [
                {"time": e.time, "actor": e.actor, "action": e.action, "study_id": e.study_id}
                for e in s.scalars(query).all()
            ]
