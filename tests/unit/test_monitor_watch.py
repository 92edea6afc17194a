"""MonitorWatch: the key of a watched process that exits reaches the callback, once, in its thread."""

from __future__ import annotations

import subprocess
import threading

from crio_fast.runtime.monitor_watch import MonitorWatch


def test_an_exit_is_told_once_and_an_unwatched_one_not_at_all() -> None:
    told: list[tuple[str, str]] = []
    event = threading.Event()

    def on_exit(key: str) -> None:
        told.append((key, threading.current_thread().name))
        event.set()

    watch = MonitorWatch(on_exit)
    first = subprocess.Popen(["sleep", "60"])
    second = subprocess.Popen(["sleep", "60"])
    try:
        watch.watch("first", first.pid)
        watch.watch("second", second.pid)
        watch.unwatch("second")
        second.kill()
        second.wait()
        first.kill()
        first.wait()
        assert event.wait(10)
        # A process gone before it is watched is told too, from the watch's thread.
        event.clear()
        watch.watch("gone", first.pid)
        assert event.wait(10)
        assert told == [("first", "monitor-watch"), ("gone", "monitor-watch")]
    finally:
        watch.close()
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_close_stops_the_thread_and_later_watches_do_nothing() -> None:
    watch = MonitorWatch(lambda key: None)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        watch.watch("p", proc.pid)
        watch.close()
        watch.watch("q", proc.pid)
        assert watch._thread is not None and not watch._thread.is_alive()
    finally:
        proc.kill()
        proc.wait()
