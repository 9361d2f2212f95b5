"""The service's job store: one row per received study, in a database through SQLAlchemy.

SQLite (a file in the store folder, WAL mode) is the embedded default; the same code runs on
PostgreSQL, so several servers can share one database (``claim_next`` takes a job with one
conditional UPDATE, which two servers cannot both win). A job moves queued -> running -> done |
failed, and -> deleting before its files go. A running job has an owner (the server's id) and a
heartbeat: a server that starts again takes back its own running jobs, and any server takes back
a job whose heartbeat is older than the lease (its server died), so several servers can share
one database without processing a study twice. ``finish`` counts only for the owner that still
holds the job. Files live under the store folder, named by the internal id (never by anything
from the request); a study received over DICOM is matched to later instances by a hash of its
StudyInstanceUID (``study_key``), not the UID. The worklist columns (patient name and id,
accession, study date and description) are patient data: the API shows them to authenticated
callers only.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Integer,
    String,
    Text,
    and_,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

STATUSES = ("queued", "running", "done", "failed", "held", "deleting")
#: a running job whose heartbeat is older than this belongs to a server that is gone
LEASE_SECONDS = 60.0
#: the worklist columns a reading room matches studies by (from the study's DICOM headers)
PATIENT_COLUMNS = ("patient_name", "patient_id", "accession", "study_date", "description")


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
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    study_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    patient_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    accession: Mapped[str | None] = mapped_column(String(100), nullable=True)
    study_date: Mapped[str | None] = mapped_column(String(16), nullable=True)
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)


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
    version: int = 1
    owner: str | None = None
    patient: dict[str, str] = field(default_factory=dict)

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
            row.version or 1,
            row.owner,
            {k: getattr(row, k) or "" for k in PATIENT_COLUMNS},
        )


def new_id() -> str:
    """An internal study id: 32 hex digits, safe as a file name, says nothing about the patient."""
    return uuid.uuid4().hex


class Store:
    """Jobs in the database at ``url`` (e.g. ``sqlite:///STORE/ichdet.db``); ``owner``: this
    server's id (the owner of the jobs it runs)."""

    def __init__(self, url: str, owner: str = "local"):
        sqlite = url.startswith("sqlite")
        self.owner = owner
        self.engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {}
        )
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

    def add(
        self, study_id: str, files: int, origin: str = "upload", study_key: str | None = None
    ) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(
                Study(
                    id=study_id,
                    status="queued",
                    received=time.time(),
                    files=files,
                    origin=origin,
                    attempts=0,
                    version=1,
                    study_key=study_key,
                )
            )

    def claim_next(self) -> str | None:
        """The oldest queued study, now running and owned by this server; None when none."""
        with Session(self.engine) as s:
            for _ in range(5):
                first = s.scalars(
                    select(Study.id).where(Study.status == "queued").order_by(Study.received)
                ).first()
                if first is None:
                    return None
                now = time.time()
                won = s.execute(
                    update(Study)
                    .where(Study.id == first, Study.status == "queued")
                    .values(
                        status="running",
                        started=now,
                        heartbeat=now,
                        owner=self.owner,
                        attempts=Study.attempts + 1,
                    )
                )
                s.commit()
                if won.rowcount == 1:  # type: ignore[attr-defined]
                    return first
        return None

    def finish(
        self,
        study_id: str,
        result: dict[str, Any],
        flagged: bool,
        p_any: float | None,
        patient: dict[str, str] | None = None,
        also: Callable[[Session], None] | None = None,
    ) -> bool:
        """Done, if this server still holds the job (False: its lease went to another).
        ``also`` writes in the same transaction (the audit event): both commit or neither."""
        columns = {k: (patient or {}).get(k, "")[:100] or None for k in PATIENT_COLUMNS}
        return self._set(
            study_id,
            also,
            status="done",
            finished=time.time(),
            result=json.dumps(result),
            flagged=flagged,
            p_any=p_any,
            reason=None,
            **columns,
        )

    def fail(self, study_id: str, reason: str) -> bool:
        return self._set(study_id, None, status="failed", finished=time.time(), reason=reason[:500])

    def _set(self, study_id: str, also: Callable[[Session], None] | None, **values: Any) -> bool:
        with Session(self.engine) as s, s.begin():
            done = s.execute(
                update(Study)
                .where(Study.id == study_id, Study.status == "running", Study.owner == self.owner)
                .values(**values)
            )
            won = bool(done.rowcount == 1)  # type: ignore[attr-defined]
            if won and also is not None:
                also(s)
            return won

    def beat(self, study_ids: list[str]) -> None:
        """The heartbeat of the jobs this server is running now (their lease is renewed)."""
        if not study_ids:
            return
        with Session(self.engine) as s, s.begin():
            s.execute(
                update(Study)
                .where(Study.id.in_(study_ids), Study.status == "running")
                .where(Study.owner == self.owner)
                .values(heartbeat=time.time())
            )

    def requeue_interrupted(self) -> int:
        """At start: this server's jobs left running (it was killed) go back to the queue, and
        jobs without an owner (left by an ichdet from before owners)."""
        return self._requeue(or_(Study.owner == self.owner, Study.owner.is_(None)))

    def requeue_expired(self, lease: float = LEASE_SECONDS) -> int:
        """Running jobs whose server has not beaten for ``lease`` seconds go back to the queue."""
        return self._requeue(Study.heartbeat < time.time() - lease)

    def _requeue(self, which: Any) -> int:
        with Session(self.engine) as s, s.begin():
            done = s.execute(
                update(Study)
                .where(Study.status == "running", which)
                .values(status="queued", owner=None)
            )
            return int(done.rowcount)  # type: ignore[attr-defined]

    def get(self, study_id: str) -> Job | None:
        with Session(self.engine) as s:
            row = s.get(Study, study_id)
            return Job.of(row) if row else None

    def by_key(self, study_key: str) -> Job | None:
        """The job of the study received over DICOM with this key, when there is one."""
        with Session(self.engine) as s:
            query = select(Study).where(Study.study_key == study_key, Study.status != "deleting")
            row = s.scalars(query.order_by(Study.received.desc())).first()
            return Job.of(row) if row else None

    def move(self, study_id: str, before: tuple[str, ...], after: str, **values: Any) -> bool:
        """``study_id`` from one of ``before`` to ``after`` (False: it was not in ``before``)."""
        with Session(self.engine) as s, s.begin():
            done = s.execute(
                update(Study)
                .where(Study.id == study_id, Study.status.in_(before))
                .values(status=after, **values)
            )
            return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    def reopen(self, study_id: str, files: int) -> bool:
        """A finished study that received more instances: queued again as its next version."""
        return self.move(
            study_id,
            ("done", "failed"),
            "queued",
            files=files,
            version=func.coalesce(Study.version, 1) + 1,  # NULL in a store from before versions
        )

    def mark_deleting(self, study_id: str) -> bool:
        """The first step of a deletion (False while it runs): a crash after it cannot bring
        the study back; its files go next, then :meth:`remove`."""
        return self.move(study_id, ("queued", "done", "failed", "held"), "deleting")

    def remove(self, study_id: str) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(Study, study_id)
            if row is not None and row.status == "deleting":
                s.delete(row)

    def ids(self, status: str) -> list[str]:
        with Session(self.engine) as s:
            return list(s.scalars(select(Study.id).where(Study.status == status)).all())

    def worklist(
        self, offset: int = 0, limit: int = 50, search: str = "", sort: str = "triage"
    ) -> tuple[list[Job], int]:
        """(a page of studies, by ``sort`` - triage: flagged first, then by p(any), then newest;
        or a worklist column, ``-`` first for descending - ; total count). ``search`` matches
        patient name or id, accession and description (case-insensitive)."""
        where = Study.status != "deleting"
        if search:
            needle = search.lower()
            fields = [Study.patient_name, Study.patient_id, Study.accession, Study.description]
            matches = (func.lower(f).contains(needle, autoescape=True) for f in fields)
            where = and_(where, or_(*matches))
        with Session(self.engine) as s:
            query = select(Study).where(where).order_by(*_order(sort))
            rows = s.scalars(query.offset(offset).limit(limit)).all()
            total = s.scalar(select(func.count()).select_from(Study).where(where)) or 0
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


SORTS = ("received", "status", "p_any", *PATIENT_COLUMNS)


def _order(sort: str) -> tuple[Any, ...]:
    if sort == "triage":
        return (Study.flagged.desc(), Study.p_any.desc().nulls_last(), Study.received.desc())
    column = getattr(Study, sort.lstrip("-"))
    return (column.desc().nulls_last() if sort.startswith("-") else column.asc().nulls_last(),)


def _add_missing_columns(engine: Any) -> None:
    """A store written by an older ichdet gets the columns added since (all nullable)."""
    have = {c["name"] for c in inspect(engine).get_columns("studies")}
    missing = [c for c in Study.__table__.columns if c.name not in have]
    with engine.begin() as connection:
        for column in missing:
            kind = column.type.compile(engine.dialect)
            connection.execute(text(f"ALTER TABLE studies ADD COLUMN {column.name} {kind}"))


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
