"""The on-disk image store: atomic records, shared layers, crash debris."""

from __future__ import annotations

import hashlib
import os

import pytest

from crio_fast.files import atomic_write
from crio_fast.image.store import ImageRecord, ImageStore, LayerRecord, chain_ids


def sha(data: str) -> str:
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def make_layer(store: ImageStore, chain_id: str, parent: str = "", files: dict[str, str] | None = None) -> LayerRecord:
    work = store.new_layer_workdir()
    for name, content in (files or {"f": chain_id}).items():
        (work / "diff" / name).write_text(content)
    record = LayerRecord(
        chain_id=chain_id, diff_id=chain_id, parent=parent, blob_digest=chain_id,
        compressed_size=10, uncompressed_size=100, entries=1, media_type="x", created_at=0.0,
    )
    assert store.commit_layer(work, record)
    return record


def test_chain_ids_follow_the_oci_definition():
    a, b, c = sha("a"), sha("b"), sha("c")
    chains = chain_ids([a, b, c])
    assert chains[0] == a
    assert chains[1] == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chains[2] == "sha256:" + hashlib.sha256(f"{chains[1]} {c}".encode()).hexdigest()
    assert chain_ids([]) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "f"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


def test_blob_digest_is_checked(tmp_path):
    store = ImageStore.open(tmp_path)
    store.put_blob(sha("x"), b"x")
    assert store.get_blob(sha("x")) == b"x"
    with pytest.raises(ValueError, match="digest mismatch"):
        store.put_blob(sha("x"), b"y")


def test_commit_layer_twice_keeps_first(tmp_path):
    store = ImageStore.open(tmp_path)
    make_layer(store, sha("l1"), files={"a": "first"})
    work = store.new_layer_workdir()
    (work / "diff" / "a").write_text("second")
    again = LayerRecord(sha("l1"), sha("l1"), "", "", 0, 0, 0, "x", 0.0)
    assert store.commit_layer(work, again) is False
    assert (store.layer_diff(sha("l1")) / "a").read_text() == "first"
    assert not work.exists()


def test_tags_move_between_images_and_records_merge(tmp_path):
    store = ImageStore.open(tmp_path)
    make_layer(store, sha("l1"))
    one = store.save_image(ImageRecord(id=sha("img1"), repo_tags=["r/x:latest"], layers=[sha("l1")]))
    assert store.find_image("r/x:latest").id == one.id
    store.save_image(ImageRecord(id=sha("img2"), repo_tags=["r/x:latest"], layers=[sha("l1")]))
    assert store.find_image("r/x:latest").id == sha("img2")
    assert store.get_image(sha("img1")).repo_tags == []
    store.save_image(ImageRecord(id=sha("img2"), repo_tags=["r/x:v2"], repo_digests=["r/x@" + sha("m")], layers=[sha("l1")]))
    merged = store.get_image(sha("img2"))
    assert merged.repo_tags == ["r/x:latest", "r/x:v2"]
    assert store.find_image("r/x@" + sha("m")).id == sha("img2")
    # Unique ID prefix lookup, as crictl users type it.
    assert store.find_image(sha("img2")[7:19]).id == sha("img2")


def test_remove_keeps_layers_other_images_use(tmp_path):
    store = ImageStore.open(tmp_path)
    base, top1, top2 = sha("base"), sha("top1"), sha("top2")
    for c in (base, top1, top2):
        make_layer(store, c)
    store.save_image(ImageRecord(id=sha("i1"), layers=[base, top1]))
    store.save_image(ImageRecord(id=sha("i2"), layers=[base, top2]))
    removed = store.remove_image(sha("i1"))
    assert removed == [top1]
    assert store.has_layer(base) and store.has_layer(top2) and not store.has_layer(top1)
    assert store.remove_image(sha("i1")) == []  # idempotent
    assert sorted(store.remove_image(sha("i2"))) == sorted([base, top2])
    assert os.listdir(store.layers) == []
    assert os.listdir(store.tmp) == []


def test_open_collects_crash_debris(tmp_path):
    store = ImageStore.open(tmp_path)
    make_layer(store, sha("kept"))
    store.save_image(ImageRecord(id=sha("i"), layers=[sha("kept")]))
    # What a crash mid-pull leaves: an extraction under tmp/, a half-written
    # record, a layer dir without its layer.json, a layer no record names.
    (store.tmp / "abc" / "diff").mkdir(parents=True)
    (store.records / ".x.json.1234.tmp").write_text("{")
    (store.layers / ("0" * 64) / "diff").mkdir(parents=True)
    make_layer(store, sha("orphan"))
    reopened = ImageStore.open(tmp_path)
    assert os.listdir(reopened.tmp) == []
    assert sorted(os.listdir(reopened.layers)) == [sha("kept")[7:]]
    assert [r.id for r in reopened.list_images()] == [sha("i")]


def test_damaged_record_hides_one_image_only(tmp_path):
    store = ImageStore.open(tmp_path)
    store.save_image(ImageRecord(id=sha("good")))
    (store.records / (sha("bad")[7:] + ".json")).write_text("{not json")
    assert [r.id for r in ImageStore.open(tmp_path).list_images()] == [sha("good")]


def test_usage_counts_layers_and_blobs(tmp_path):
    store = ImageStore.open(tmp_path)
    make_layer(store, sha("l"))
    store.put_blob(sha("blob"), b"blob")
    used, inodes = store.usage()
    assert used == 100 + 4
    assert inodes == 1 + 2 + 1
