"""What bounds an ExecSync: its output (runtime/capture.py) and the end of its call (runtime/call_end.py)."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from crio_fast.errors import Cancelled, DeadlineExceeded
from crio_fast.runtime.call_end import CallEnd
from crio_fast.runtime.capture import CappedOutput, dropped_note


def _pipe_with(data: bytes) -> int:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)

    def write() -> None:
        with os.fdopen(write_end, "wb") as out:
            out.write(data)

    threading.Thread(target=write, daemon=True).start()
    return read_end


@pytest.mark.parametrize(("size", "limit"), [(10, 100), (1 << 20, 4096), (300_000, 0), (4096, 4096)])
def test_output_past_the_limit_is_read_and_dropped(size: int, limit: int):
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    fd = _pipe_with(data)
    output = CappedOutput(fd, limit)
    try:
        while True:
            select.select([fd], [], [], 5)
            if not output.read_available():
                break
        kept = output.take()
        assert len(kept) == min(size, limit) and output.dropped == size - len(kept)
        assert kept == data[:len(kept)]
    finally:
        output.close()
        os.close(fd)


def test_the_note_says_how_much_was_dropped():
    assert dropped_note("stdout", 16, 0) == b""
    assert dropped_note("stderr", 16, 5) == b"crio-fast: the command's stderr was cut at 16 bytes; 5 more bytes were dropped\n"


def test_a_call_ended_by_the_client_wakes_a_waiter_and_says_cancelled():
    with CallEnd(None) as call:
        assert call.deadline is None and call.limit(None) is None and not call.ended
        threading.Timer(0.05, call.end).start()
        readable, _, _ = select.select([call], [], [], 5)
        assert readable and call.ended
        with pytest.raises(Cancelled):
            call.raise_ended("exec x")
    call.end()  # after close: nothing happens


def test_a_call_past_its_deadline_has_ended():
    with CallEnd(0.01) as call:
        assert call.limit(60) == call.deadline
        time.sleep(0.02)
        assert call.ended
        with pytest.raises(DeadlineExceeded):
            call.raise_ended("exec x")


def test_no_deadline_as_grpc_reports_it():
    with CallEnd(9.2e18) as call:
        assert call.deadline is None
        assert call.limit(5) == pytest.approx(time.monotonic() + 5, abs=1)
