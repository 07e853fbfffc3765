"""The zip writer's promises without a full build: the same files give the same bytes
whatever their timestamps, build leftovers stay out, and a wrong root is a one-line error."""

import os
import zipfile
from pathlib import Path

import pytest

from datamailer_server import lambda_zip


def tree(root: Path, stamp: int) -> Path:
    for relative, content in {
        "pkg/__init__.py": "",
        "pkg/mod.py": "X = 1\n",
        "pkg/__pycache__/mod.cpython-311.pyc": "junk",
        "pkg-1.0.dist-info/METADATA": "Name: pkg\n",
        "bin/tool": "#!/build/python\n",
        ".lock": "",
    }.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        os.utime(path, (stamp, stamp))
    return root


def test_the_same_files_give_the_same_zip_whatever_their_timestamps(tmp_path: Path) -> None:
    first = tree(tmp_path / "a", 1_700_000_000)
    second = tree(tmp_path / "b", 1_800_000_000)
    count = lambda_zip.write_zip(first, tmp_path / "a.zip")
    lambda_zip.write_zip(second, tmp_path / "b.zip")

    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.namelist() == ["pkg/__init__.py", "pkg/mod.py", "pkg-1.0.dist-info/METADATA"]
        assert archive.read("pkg/mod.py") == b"X = 1\n"
    assert count == 3


def test_a_root_that_is_not_the_workspace_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lambda_zip.main(["--root", str(tmp_path), "--output", str(tmp_path / "x.zip")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path} is not the Datamailer workspace (no uv.lock)\n"
    assert not (tmp_path / "x.zip").exists()
