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
