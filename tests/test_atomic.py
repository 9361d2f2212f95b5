import os

import pytest

from ichdet.util.atomic import FILE_MODE, atomic_path, write_text


def test_atomic_writes_leave_no_temp_and_normal_permissions(tmp_path):
    path = write_text(tmp_path / "a" / "out.txt", "hello")
    assert path.read_text() == "hello"
    assert (os.stat(path).st_mode & 0o777) == FILE_MODE
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert not (tmp_path / "b.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # the temp file is gone too


def test_write_bytes_makes_folders_keeps_permissions_and_survives_a_stale_temp(tmp_path):
    from itertools import count

    import ichdet.util.atomic as atomic

    target = tmp_path / "x" / "y" / "entry.bin"
    assert atomic.write_bytes(target, b"one").read_bytes() == b"one"
    assert (os.stat(target).st_mode & 0o777) == FILE_MODE
    # a temp file left by a dead process with our pid and the next serial number
    atomic._serial = count(1000)
    stale = target.parent / f".entry.bin.{os.getpid()}.1000.tmp"
    stale.write_bytes(b"half")
    assert atomic.write_bytes(target, b"two").read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == [stale.name, "entry.bin"]


def test_write_bytes_leaves_no_temp_when_the_write_fails(tmp_path, monkeypatch):
    import ichdet.util.atomic as atomic

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_bytes(tmp_path / "entry.bin", b"data")
    assert list(tmp_path.iterdir()) == []
