"""runtime/fdwait.py: poll(2) waits that work for descriptors select(2) cannot take (above 1023)."""

import os
import resource
import time

import pytest

from crio_fast.runtime import fdwait

HIGH_FD = 1500


@pytest.fixture
def high_pipe():
    """A pipe whose ends are numbered above FD_SETSIZE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= HIGH_FD + 1:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} leaves no descriptor above {HIGH_FD}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HIGH_FD + 2), hard))
    r, w = os.pipe()
    os.dup2(r, HIGH_FD)
    os.dup2(w, HIGH_FD + 1)
    os.close(r)
    os.close(w)
    try:
        yield HIGH_FD, HIGH_FD + 1
    finally:
        for fd in (HIGH_FD, HIGH_FD + 1):
            try:
                os.close(fd)
            except OSError:
                pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_readable_above_fd_setsize(high_pipe):
    r, w = high_pipe
    assert not fdwait.wait_readable(r, 0)
    os.write(w, b"x")
    assert fdwait.wait_readable(r, 0)


def test_end_of_file_is_readable(high_pipe):
    r, w = high_pipe
    os.close(w)
    assert fdwait.wait_readable(r, 0)
    assert os.read(r, 1) == b""


def test_wait_reports_readers_and_writers_apart(high_pipe):
    r, w = high_pipe
    assert fdwait.wait([r], [w], 0) == ([], [w])
    os.write(w, b"x")
    assert fdwait.wait([r], [w], 0) == ([r], [w])


def test_a_writer_whose_reader_is_gone_is_reported(high_pipe):
    r, w = high_pipe
    os.close(r)
    assert fdwait.wait([], [w], 0) == ([], [w])
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x")


def test_timeout_waits_and_short_timeouts_round_up(high_pipe):
    r, _ = high_pipe
    started = time.monotonic()
    assert not fdwait.wait_readable(r, 0.05)
    assert time.monotonic() - started >= 0.045
    assert not fdwait.wait_readable(r, 0.0001)  # rounds up to 1 ms, not 0 (a busy loop) nor an error
