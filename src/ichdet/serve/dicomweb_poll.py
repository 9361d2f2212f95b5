"""``ichdet serve --dicomweb URL --poll 60``: a DICOMweb server watched for new studies.

Every ``poll`` seconds a QIDO-RS search asks for the studies of the query (CT by default)
from a day before the last poll on (``StudyDate``: the search the standard offers; a study
acquired earlier but stored late is found within that day). A study is taken once it has
settled: its NumberOfStudyRelatedInstances unchanged for ``settle`` seconds over two polls
or more (a study the scanner is still sending is never read half). A study not seen before
has its series chosen from the WADO-RS metadata, the chosen series fetched into a temporary
folder, and becomes a queued job (origin ``dicomweb``) like an upload: it shows in the
worklist, and its SR and Secondary Captures are written as for a study received over DICOM.
A study is keyed by a hash of its StudyInstanceUID, so it becomes one job however often it
is seen.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ichdet.dicomweb.client import DicomwebServer
from ichdet.dicomweb.fetch import fetch_series, plan_study, study_sizes
from ichdet.selection.choose import SelectionOptions
from ichdet.serve.store import Store, new_id
from ichdet.serve.supervise import Supervisor
from ichdet.util.atomic import write_text
from ichdet.util.names import path_component

log = logging.getLogger("ichdet.serve")
ORIGIN = "dicomweb"
LOOKBACK = dt.timedelta(days=1)
DEFAULT_QUERY = {"ModalitiesInStudy": "CT"}
#: a study is fetched once its instance count has not changed for this long (Orthanc's
#: default "stable age" is 60 s too): a study still being stored is not read half
SETTLE_SECONDS = 60.0


def poll_key(study_uid: str) -> str:
    return hashlib.sha256(f"dicomweb:{study_uid}".encode()).hexdigest()


class DicomwebPoller:
    def __init__(
        self,
        server: DicomwebServer,
        store: Store,
        root: Path,
        wake: threading.Event,
        every: float = 60.0,
        selection: SelectionOptions | None = None,
        training_mm: float | None = None,
        room: Callable[[], int] = lambda: 1,
        query: dict[str, str] | None = None,
        settle: float = SETTLE_SECONDS,
    ):
        self.server, self.store, self.root, self.wake = server, store, root, wake
        self.every, self.room, self.settle = every, room, settle
        self.selection = selection or SelectionOptions()
        self.training_mm = training_mm
        self.query = dict(query or DEFAULT_QUERY)
        self.since = dt.date.today() - LOOKBACK
        #: studies with nothing to read, by their size then (asked again only if they grow)
        self.unreadable: dict[str, str] = {}
        #: studies not yet taken: their size, and since when it has not changed
        self.sizes: dict[str, tuple[str, float]] = {}
        self.stopping = threading.Event()
        self.supervisor = Supervisor(self.stopping)

    def start(self) -> None:
        self.supervisor.spawn("dicomweb-poll", self.poll, pause=self.every)
        log.info("watching a DICOMweb server every %.0f s", self.every)

    def stop(self) -> None:
        self.stopping.set()
        self.supervisor.join(timeout=10)

    def poll(self) -> int:
        """One poll; returns the studies queued."""
        started = dt.date.today()
        client = self.server.client()
        query = {**self.query, "StudyDate": f"{self.since:%Y%m%d}-"}
        found = study_sizes(client, query)
        # what fell out of the window is never asked for again: forget it (bounded memory)
        self.sizes = {uid: seen for uid, seen in self.sizes.items() if uid in found}
        self.unreadable = {uid: n for uid, n in self.unreadable.items() if uid in found}
        queued, waiting = 0, False
        for uid, size in found.items():
            if self.stopping.is_set() or self.room() <= 0:
                return queued  # the rest wait for the next poll (since is kept)
            if self.unreadable.get(uid) == size or self.store.by_key(poll_key(uid)) is not None:
                continue
            if not self._settled(uid, size):
                waiting = True  # still arriving: the window stays until it is taken
                continue
            try:
                queued += self._queue(client, uid, size)
            except Exception as exc:  # noqa: BLE001 - one study must not hold up the others
                waiting = True  # tried again next poll: the window does not move past it
                log.warning(
                    "a DICOMweb study could not be fetched (%s); next poll", type(exc).__name__
                )
        if not waiting:
            self.since = started - LOOKBACK
        return queued

    def _settled(self, uid: str, size: str) -> bool:
        """Whether the study's size (its instances, as the server counts them) has stayed the
        same for ``settle`` seconds over two polls or more: a study still being stored is
        not fetched half."""
        now = time.monotonic()
        seen = self.sizes.get(uid)
        if seen is None or seen[0] != size:
            self.sizes[uid] = (size, now)
            return False
        return now - seen[1] >= self.settle

    def _queue(self, client: object, uid: str, size: str) -> int:
        plan = plan_study(client, uid, self.selection, self.training_mm)
        if not plan.series:
            self.unreadable[uid] = size
            log.info("a DICOMweb study has nothing to read (%s)", plan.reason)
            return 0
        study_id = new_id()
        # swept at the next start if this process dies mid-fetch (Context.sweep)
        incoming = self.root / f"incoming-{path_component(self.store.owner)}-{study_id}"
        try:
            for series in plan.series:
                fetch_series(self.server, uid, series, incoming)
            target = self.root / "studies" / study_id
            target.mkdir(parents=True)
            files = target / "files"
            files.mkdir()
            count = 0
            for path in sorted(incoming.rglob("*.dcm")):
                path.rename(files / f"{count:06d}-{path_component(path.stem)}.dcm")
                count += 1
            write_text(target / "origin", ORIGIN)
            write_text(target / "study_key", poll_key(uid))
            write_text(target / "owner", self.store.owner)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        self.store.add(study_id, count, origin=ORIGIN, study_key=poll_key(uid))
        self.wake.set()
        log.info("study %s fetched from DICOMweb (%d instances)", study_id, count)
        return 1
