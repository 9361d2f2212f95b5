"""The job store's transactions: a study marked done and its audit event commit together."""

import pytest

from ichdet.serve.audit import Audit
from ichdet.serve.store import Store


class Crash(RuntimeError):
    pass


def _running(store: Store) -> str:
    store.add("a" * 32, files=3)
    study_id = store.claim_next()
    assert study_id == "a" * 32
    return study_id


def test_done_and_its_audit_event_commit_together_or_not_at_all(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'ichdet.db'}", owner="server-a")
    audit = Audit(store)
    study_id = _running(store)

    def crash_after_the_event(session):
        audit.add(session, "server:server-a", "done", study_id)
        raise Crash  # the process dies between the event and the commit

    with pytest.raises(Crash):
        store.finish(study_id, {"k": 1}, False, 0.1, also=crash_after_the_event)
    assert store.get(study_id).status == "running"  # rolled back: neither the status ...
    assert audit.events(action="done") == []  # ... nor the event

    def record(session):
        audit.add(session, "server:server-a", "done", study_id)

    assert store.finish(study_id, {"k": 1}, True, 0.9, also=record)
    assert store.get(study_id).status == "done"
    assert [e["study_id"] for e in audit.events(action="done")] == [study_id]


def test_a_server_without_the_lease_writes_neither_result_nor_event(tmp_path):
    url = f"sqlite:///{tmp_path / 'ichdet.db'}"
    store_a, store_b = Store(url, owner="server-a"), Store(url, owner="server-b")
    audit = Audit(store_a)
    study_id = _running(store_a)
    calls = []
    assert not store_b.finish(study_id, {}, False, 0.1, also=calls.append)
    assert calls == [] and store_a.get(study_id).status == "running"
    assert audit.events() == []
