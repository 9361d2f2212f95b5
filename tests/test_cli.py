import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from ichdet.cli import app

runner = CliRunner()


def test_info_json_and_skips(write_ct, hu_image, tmp_path):
    good = write_ct("good.dcm", (hu_image + 1024).astype(np.int16), sop_instance_uid="ID_good")
    junk = tmp_path / "junk[bold].dcm"  # brackets must not be read as rich markup
    junk.write_bytes(b"\x00" * 10)
    result = runner.invoke(app, ["info", "--json", str(good), str(junk)])
    assert result.exit_code == 1  # one file skipped
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["sop_instance_uid"] == "ID_good"
    assert lines[0]["hu_min"] == -1000 and lines[0]["hu_max"] == hu_image.max()
    assert "junk[bold].dcm" in result.stderr and "1 of 2 file(s) skipped" in result.stderr


def test_view_writes_panels(write_ct, hu_image, tmp_path):
    path = write_ct("v.dcm", (hu_image + 1024).astype(np.int16))
    out = tmp_path / "v.png"
    result = runner.invoke(app, ["view", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.width > 3 * img.height  # six panels side by side
    bad = runner.invoke(app, ["view", str(tmp_path / "nope.dcm"), "--out", str(out)])
    assert bad.exit_code == 1 and "file not found" in bad.stderr


def test_python_m_ichdet_help():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "ichdet", "--help"], capture_output=True, text=True, check=True
    )
    assert "info" in proc.stdout and "view" in proc.stdout
