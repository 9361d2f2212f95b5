"""The service's job store: one row per received study, in a database through SQLAlchemy.

SQLite (a file in the store folder, WAL mode) is the embedded default; the same code runs on
PostgreSQL, so several servers can share one database (``claim_next`` takes a job with one
conditional UPDATE, which two servers cannot both win). A job moves queued -> running -> done |
failed; ``requeue_interrupted`` puts back what a killed server was running, so every received
study is processed after a restart. Rows hold internal ids and results only; the files live
under the store folder, named by the internal id (never by anything from the request).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

STATUSES = ("queued", "running", "done", "failed")


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(8), index=True)
    received: Mapped[float] = mapped_column(Float, index=True)
    started: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    files: Mapped[int] = mapped_column(Integer, default=0)
    origin: Mapped[str] = mapped_column(String(8), default="upload")  # upload | dicom
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    p_any: Mapped[float | None] = mapped_column(Float, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON


@dataclass
class Job:
    """A study row as the API shows it (``result`` parsed)."""

    id: str
    status: str
    received: float
    started: float | None
    finished: float | None
    attempts: int
    files: int
    origin: str
    reason: str | None
    flagged: bool
    p_any: float | None
    result: dict[str, Any] | None

    @classmethod
    def of(cls, row: Study) -> Job:
        return cls(
            row.id,
            row.status,
            row.received,
            row.started,
            row.finished,
            row.attempts,
            row.files,
            row.origin,
            row.reason,
            row.flagged,
            row.p_any,
            json.loads(row.result) if row.result else None,
        )


def new_id() -> str:
    """An internal study id: 32 hex digits, safe as a file name, says nothing about the patient."""
    return uuid.uuid4().hex


class Store:
    """Jobs in the database at ``url`` (e.g. ``sqlite:///STORE/ichdet.db``)."""

    def __init__(self, url: str):
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {}
        )
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)

    def add(self, study_id: str, files: int, origin: str = "upload") -> None:
        with Session(self.engine) as s, s.begin():
            s.add(
                Study(
                    id=study_id,
                    status="queued",
                    received=time.time(),
                    files=files,
                    origin=origin,
                    attempts=0,
                )
            )

    def claim_next(self) -> str | None:
        """The oldest queued study, now marked running; None when the queue is empty."""
        with Session(self.engine) as s:
            for _ in range(5):
                first = s.scalars(
                    select(Study.id).where(Study.status == "queued").order_by(Study.received)
                ).first()
                if first is None:
                    return None
                won = s.execute(
                    update(Study)
                    .where(Study.id == first, Study.status == "queued")
                    .values(status="running", started=time.time(), attempts=Study.attempts + 1)
                )
                s.commit()
                if won.rowcount == 1:  # type: ignore[attr-defined]
                    return first
        return None

    def finish(
        self, study_id: str, result: dict[str, Any], flagged: bool, p_any: float | None
    ) -> None:
        self._set(
            study_id,
            status="done",
            finished=time.time(),
            result=json.dumps(result),
            flagged=flagged,
            p_any=p_any,
            reason=None,
        )

    def fail(self, study_id: str, reason: str) -> None:
        self._set(study_id, status="failed", finished=time.time(), reason=reason[:500])

    def _set(self, study_id: str, **values: Any) -> None:
        with Session(self.engine) as s, s.begin():
            s.execute(
                update(Study)
                .where(Study.id == study_id, Study.status == "running")
                .values(**values)
            )

    def requeue_interrupted(self) -> int:
        """Studies left running by a server that died go back to the queue."""
        with Session(self.engine) as s, s.begin():
            done = s.execute(update(Study).where(Study.status == "running").values(status="queued"))
            return int(done.rowcount)  # type: ignore[attr-defined]

    def get(self, study_id: str) -> Job | None:
        with Session(self.engine) as s:
            row = s.get(Study, study_id)
            return Job.of(row) if row else None

    def delete(self, study_id: str) -> bool:
        with Session(self.engine) as s, s.begin():
            row = s.get(Study, study_id)
            if row is None:
                return False
            s.delete(row)
            return True

    def worklist(self, offset: int = 0, limit: int = 50) -> tuple[list[Job], int]:
        """(a page of studies, flagged first, then by p(any), then newest; total count)."""
        order = (Study.flagged.desc(), Study.p_any.desc().nulls_last(), Study.received.desc())
        with Session(self.engine) as s:
            rows = s.scalars(select(Study).order_by(*order).offset(offset).limit(limit)).all()
            total = s.scalar(select(func.count()).select_from(Study)) or 0
            return [Job.of(r) for r in rows], int(total)

    def count(self, status: str) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).where(Study.status == status)) or 0)

    def older_than(self, seconds: float) -> list[str]:
        """Finished studies received more than ``seconds`` ago (for retention)."""
        cutoff = time.time() - seconds
        with Session(self.engine) as s:
            query = select(Study.id).where(
                Study.received < cutoff, Study.status.in_(("done", "failed"))
            )
            return list(s.scalars(query).all())


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
