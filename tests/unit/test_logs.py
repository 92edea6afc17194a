"""A container's log file kept inside its pod's log directory (crio_fast/logs.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crio_fast.errors import InvalidArgument
from crio_fast.files import open_beneath
from crio_fast.logs import prepare_log_file


def test_the_directories_on_the_way_are_made(tmp_path: Path):
    log_file = prepare_log_file(str(tmp_path / "pod"), "c/d/0.log")
    assert log_file is not None and log_file.relative == "c/d/0.log"
    assert log_file.path == str(tmp_path / "pod" / "c" / "d" / "0.log")
    assert (tmp_path / "pod" / "c" / "d").is_dir() and not Path(log_file.path).exists()


def test_no_directory_or_path_no_log(tmp_path: Path):
    assert prepare_log_file("", "0.log") is None
    assert prepare_log_file(str(tmp_path), "") is None


@pytest.mark.parametrize("log_path", ["out/x.log", "out/sub/x.log", "file.log"])
def test_a_symlink_out_is_refused_and_nothing_is_made_outside(tmp_path: Path, log_path: str):
    pod, outside = tmp_path / "pod", tmp_path / "outside"
    pod.mkdir()
    outside.mkdir()
    (outside / "target").write_text("keep")
    (pod / "out").symlink_to(outside)
    (pod / "file.log").symlink_to(outside / "target")
    with pytest.raises(InvalidArgument, match="leads out of the log directory"):
        prepare_log_file(str(pod), log_path)
    assert sorted(os.listdir(outside)) == ["target"]


def test_a_symlink_inside_is_followed(tmp_path: Path):
    pod = tmp_path / "pod"
    (pod / "real").mkdir(parents=True)
    (pod / "alias").symlink_to("real")
    assert prepare_log_file(str(pod), "alias/0.log") is not None


@pytest.mark.parametrize("log_path", ["../x.log", "/x.log", "a/../../x.log"])
def test_paths_out_are_refused(tmp_path: Path, log_path: str):
    with pytest.raises(InvalidArgument):
        prepare_log_file(str(tmp_path / "pod"), log_path)


def test_something_other_than_a_file_is_refused(tmp_path: Path):
    (tmp_path / "pod" / "0.log").mkdir(parents=True)
    os.mkfifo(tmp_path / "pod" / "fifo.log")
    for log_path in ("0.log", "fifo.log"):
        with pytest.raises(InvalidArgument, match="not a regular file"):
            prepare_log_file(str(tmp_path / "pod"), log_path)


def test_open_beneath_refuses_dot_dot(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    fd = os.open(tmp_path / "sub", os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as info:
            open_beneath(fd, "../sub", os.O_PATH)
        assert info.value.errno == 18  # EXDEV
        os.close(open_beneath(fd, ".", os.O_PATH))
    finally:
        os.close(fd)
