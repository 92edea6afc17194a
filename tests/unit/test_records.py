"""The durable record store: what is saved comes back after a reopen, damage stays contained."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from crio_fast.errors import InvalidArgument
from crio_fast.state.records import CTR_CREATED, CTR_RUNNING, POD_READY, ContainerRecord, PodRecord, StateStore


def pod(pod_id: str, **changes) -> PodRecord:
    values = dict(id=pod_id, name=f"k8s_{pod_id}", config="Cg==", runtime_handler="", state=POD_READY,
                  created_at=1, pod_dir=f"/run/x/{pod_id}", cgroup_path="/crio-fast/p", cgroup_created=True)
    values.update(changes)
    return PodRecord(**values)


def container(container_id: str, **changes) -> ContainerRecord:
    values = dict(id=container_id, pod_id="p1", name=f"k8s_{container_id}", config="Cg==", image_id="sha",
                  image_ref="busybox", state=CTR_CREATED, created_at=2)
    values.update(changes)
    return ContainerRecord(**values)


def test_saved_records_come_back_after_reopen(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.pods.save(pod("p1", namespaces={"net": "new"}, ips=["10.0.0.2"]))
    c = container("c1", mounts=[{"container_path": "/data", "readonly": True}], process={"env": ["A=b"], "uid": 7})
    store.containers.save(c)
    c.state, c.started_at, c.pid = CTR_RUNNING, 99, 1234
    store.containers.save(c)  # a rewrite replaces the row
    store.containers.save(container("c2"))
    store.containers.delete("c2")
    store.close()

    again = StateStore(str(tmp_path))
    assert [p.id for p in again.pods.values()] == ["p1"]
    assert again.pods.get("p1") == pod("p1", namespaces={"net": "new"}, ips=["10.0.0.2"])
    loaded = again.containers.get("c1")
    assert loaded == c and loaded.state == CTR_RUNNING and loaded.pid == 1234
    assert again.containers.get("c2") is None
    assert again.containers.find("c") == loaded  # a unique prefix
    again.close()


def test_find_by_id_unique_prefix_or_nothing_and_refuses_an_ambiguous_prefix(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    for record_id in ("ab12", "ab34", "cd56"):
        store.containers.save(container(record_id))
    assert store.containers.find("ab12").id == "ab12"
    assert store.containers.find("c").id == "cd56"
    assert store.containers.find("ef") is None and store.containers.find("") is None
    with pytest.raises(InvalidArgument, match="container ID prefix 'ab' is ambiguous: it matches 2 containers"):
        store.containers.find("ab")
    store.close()


def test_a_reserved_record_is_saved_marked_creating_until_its_last_save(tmp_path: Path) -> None:
    """What a daemon that dies while making a pod or container finds at its next start."""
    store = StateStore(str(tmp_path))
    store.pods.reserve(pod("p1"))
    store.containers.reserve(container("c1"))
    assert store.pods.get("p1").creating and store.containers.get("c1").creating
    store.close()
    again = StateStore(str(tmp_path))
    assert [(p.id, p.creating) for p in again.pods.values()] == [("p1", True)]
    assert [(c.id, c.creating) for c in again.containers.values()] == [("c1", True)]
    made = again.pods.get("p1")
    made.creating = False
    again.pods.save(made)
    again.close()
    assert not StateStore(str(tmp_path)).pods.get("p1").creating


def test_a_row_of_a_build_without_creating_is_a_finished_record(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    store.close()
    body = json.loads(StateStore(str(tmp_path)).pods.encode(pod("old")))
    del body["creating"]
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    db.execute("INSERT INTO pods VALUES ('old', ?)", (json.dumps(body),))
    db.commit()
    db.close()
    assert StateStore(str(tmp_path)).pods.get("old").creating is False


def test_the_cached_list_entry_stays_in_memory(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    c = container("c1")
    c.list_entry = (CTR_CREATED, object())  # what ListContainers caches: not JSON, never written
    store.containers.save(c)
    p = pod("p1")
    p.list_entry = (POD_READY, object())
    store.pods.save(p)
    assert "list_entry" not in store.containers.encode(c) and "list_entry" not in store.pods.encode(p)
    store.close()
    again = StateStore(str(tmp_path))
    assert again.containers.get("c1").list_entry is None and again.pods.get("p1").list_entry is None
    again.close()


def test_a_damaged_row_hides_only_that_record(tmp_path: Path, caplog) -> None:
    store = StateStore(str(tmp_path))
    store.containers.save(container("good"))
    store.close()
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    db.execute("INSERT INTO containers VALUES ('bad', '{not json')")
    db.execute("INSERT INTO containers VALUES ('worse', '{\"id\": \"worse\"}')")  # required fields missing
    db.commit()
    db.close()

    again = StateStore(str(tmp_path))
    assert [c.id for c in again.containers.values()] == ["good"]
    assert "ignoring damaged containers record bad" in caplog.text
    assert "ignoring damaged containers record worse" in caplog.text


def test_an_unreadable_database_is_moved_aside(tmp_path: Path, caplog) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.db").write_bytes(b"this is not a database" * 100)
    store = StateStore(str(tmp_path))
    store.pods.save(pod("p1"))
    names = os.listdir(tmp_path / "state")
    assert any(n.startswith("state.db.damaged-") for n in names)
    assert "cannot be used" in caplog.text
    store.close()
    assert [p.id for p in StateStore(str(tmp_path)).pods.values()] == ["p1"]


def _save_then_die(root: str) -> None:
    store = StateStore(root)
    store.containers.save(container("c1", state=CTR_RUNNING))
    os._exit(0)  # no close, no checkpoint: as a crashed daemon leaves it


def test_a_saved_record_survives_a_process_that_dies_without_closing(tmp_path: Path) -> None:
    child = multiprocessing.get_context("fork").Process(target=_save_then_die, args=(str(tmp_path),))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert StateStore(str(tmp_path)).containers.get("c1").state == CTR_RUNNING


def test_seccomp_programs_are_kept_once_and_named_by_digest(tmp_path: Path) -> None:
    store = StateStore(str(tmp_path))
    default, other = bytes(range(256)) * 8, b"\x06\x00\x00\x00\x00\x00\xff\x7f"
    digest = store.seccomp.add(default)
    assert store.seccomp.add(default) == digest  # the same program, the same row
    store.containers.save(container("c1", process={"seccomp_digest": digest}))
    store.containers.save(container("c2", process={"seccomp_digest": digest}))
    orphan = store.seccomp.add(other)  # its container's record never got saved
    row = store.db.rows("containers")[0][1]
    assert len(row) < 500 and digest in row
    store.close()

    again = StateStore(str(tmp_path))
    assert again.seccomp.get(digest) == default
    # A program no record names is dropped at start.
    assert again.seccomp.get(orphan) is None
    assert [d for d, _ in again.db.rows("seccomp")] == [digest]
    again.close()
