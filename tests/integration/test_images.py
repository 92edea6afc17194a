"""ImageService end to end: a real daemon pulling from a real registry server."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from crio_fast.api import api_pb2 as api
from crio_fast.image.store import chain_ids
from tests.support.daemon import Daemon, run_cli
from tests.support.registries_conf import write_registries_conf
from tests.support.images import LayerBuilder
from tests.support.pods import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def image_daemon(daemon_dirs, registries_conf):
    d = Daemon(daemon_dirs, "--registries-conf", str(registries_conf)).start()
    try:
        yield d
    finally:
        try:
            d.stop()
        finally:
            d.kill()


def pull(d: Daemon, image: str, auth: api.AuthConfig | None = None) -> str:
    req = api.PullImageRequest(image=api.ImageSpec(image=image))
    if auth is not None:
        req.auth.CopyFrom(auth)
    return d.client.image.PullImage(req, timeout=60).image_ref


def status(d: Daemon, image: str, verbose: bool = False) -> api.ImageStatusResponse:
    return d.client.image.ImageStatus(api.ImageStatusRequest(image=api.ImageSpec(image=image), verbose=verbose), timeout=10)


def store_dirs(d: Daemon) -> dict[str, list[str]]:
    base = d.dirs.root / "images"
    return {name: sorted(os.listdir(base / name)) for name in ("layers", "records", "tmp")}


def assert_store_empty(d: Daemon) -> None:
    assert store_dirs(d) == {"layers": [], "records": [], "tmp": []}


def layer_root(d: Daemon, chain_id: str) -> Path:
    return d.dirs.root / "images" / "layers" / chain_id.split(":", 1)[1] / "diff"


def test_pull_by_tag_then_status_list_and_files(image_daemon, push_image):
    pushed = push_image(user="1000", cmd=["sh"])
    image_id = pull(image_daemon, pushed.reference)
    assert image_id == pushed.config_digest

    st = status(image_daemon, pushed.reference, verbose=True)
    assert st.image.id == image_id
    assert list(st.image.repo_tags) == [pushed.reference]
    assert list(st.image.repo_digests) == [f"{pushed.registry}/{pushed.repository}@{pushed.manifest_digest}"]
    assert st.image.uid.value == 1000
    assert st.image.size > 1_000_000  # busybox alone is over a megabyte
    assert json.loads(st.info["info"])["imageSpec"]["config"]["Cmd"] == ["sh"]

    listed = image_daemon.client.image.ListImages(api.ListImagesRequest(), timeout=10).images
    assert [i.id for i in listed] == [image_id]
    by_filter = image_daemon.client.image.ListImages(
        api.ListImagesRequest(filter=api.ImageFilter(image=api.ImageSpec(image=pushed.reference))), timeout=10
    ).images
    assert [i.id for i in by_filter] == [image_id]

    base = layer_root(image_daemon, chain_ids(pushed.diff_ids)[0])
    assert (base / "bin" / "busybox").stat().st_size > 500_000
    assert os.readlink(base / "bin" / "sh") in ("busybox", "/bin/busybox")


def test_unknown_image_status_is_empty_not_an_error(image_daemon):
    st = status(image_daemon, "docker.io/library/never-pulled:1")
    assert not st.HasField("image")


def test_pull_by_digest_and_short_name(image_daemon, push_image):
    pushed = push_image()
    assert pull(image_daemon, pushed.digest_reference) == pushed.config_digest
    # The registry is the search registry: "test/img-N:latest" resolves to it.
    short = f"{pushed.repository}:{pushed.tag}"
    assert pull(image_daemon, short) == pushed.config_digest
    assert status(image_daemon, pushed.digest_reference).image.id == pushed.config_digest
    assert pushed.reference in status(image_daemon, short).image.repo_tags


def test_short_name_finds_an_image_pulled_by_its_docker_hub_name(image_daemon, registries_conf, push_image, registry):
    """The kubelet pulls docker.io/library/NAME; a short NAME refers to it later even when
    docker.io is not a search registry (critest's multi-container tests do this)."""
    pushed = push_image(repository="library/hubimg")
    # Fetch docker.io/library/hubimg from the test registry (no traffic leaves the host).
    with open(registries_conf, "a") as conf:
        conf.write(f'\n[[registry]]\nprefix = "docker.io/library/hubimg"\nlocation = "{registry.host}/library/hubimg"\n'
                   "insecure = true\n")
    assert pull(image_daemon, f"docker.io/library/hubimg:{pushed.tag}") == pushed.config_digest
    assert status(image_daemon, "hubimg").image.id == pushed.config_digest
    assert status(image_daemon, f"hubimg:{pushed.tag}").image.id == pushed.config_digest


# Docker's media types have no zstd layer type.
@pytest.mark.parametrize(
    "media,compression",
    [("oci", "gzip"), ("oci", "zstd"), ("oci", "none"), ("docker", "gzip"), ("docker", "none")],
)
def test_pull_each_compression(image_daemon, push_image, compression, media):
    extra = LayerBuilder().dir("data").file("data/hello.txt", "hello\n", mode=0o640, uid=1000, gid=1000)
    pushed = push_image(compression=compression, media=media, extra_layers=[extra])
    assert pull(image_daemon, pushed.reference) == pushed.config_digest
    top = layer_root(image_daemon, chain_ids(pushed.diff_ids)[-1]) / "data" / "hello.txt"
    assert top.read_text() == "hello\n"
    st = top.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o640)


def test_multi_arch_index_selects_this_node(image_daemon, push_image):
    pushed = push_image(multi_arch=True)
    assert pull(image_daemon, pushed.reference) == pushed.config_digest
    st = status(image_daemon, pushed.reference)
    assert list(st.image.repo_digests) == [pushed.digest_reference]
    chain = chain_ids(pushed.diff_ids)
    marker = (layer_root(image_daemon, chain[0]) / "etc" / "test-platform").read_text()
    native = [p for p in pushed.platforms if p.split("/")[1] in ("amd64", "arm64") and pushed.platforms[p] == pushed.manifest_digest]
    assert marker.strip() == native[0]


def test_whiteouts_become_overlay_form(image_daemon, push_image):
    extra = LayerBuilder().whiteout("etc/group").opaque("tmp")
    pushed = push_image(extra_layers=[extra])
    pull(image_daemon, pushed.reference)
    top = layer_root(image_daemon, chain_ids(pushed.diff_ids)[-1])
    wh = (top / "etc" / "group").lstat()
    assert wh.st_rdev == 0 and (wh.st_mode & 0o170000) == 0o020000
    assert os.getxattr(top / "tmp", "trusted.overlay.opaque") == b"y"


def test_auth_good_bad_and_missing_credentials(daemon_dirs, tmp_path, registry, auth_registry, push_image):
    conf = write_registries_conf(tmp_path / "registries.conf", [registry.host, auth_registry.host])
    pushed = push_image(registry=auth_registry)
    d = Daemon(daemon_dirs, "--registries-conf", str(conf)).start()
    try:
        user, password = auth_registry.auth
        with pytest.raises(grpc.RpcError) as err:
            pull(d, pushed.reference)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert auth_registry.host in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            pull(d, pushed.reference, api.AuthConfig(username=user, password="wrong"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert_store_empty(d)
        assert pull(d, pushed.reference, api.AuthConfig(username=user, password=password)) == pushed.config_digest
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        assert pull(d, pushed.reference, api.AuthConfig(auth=token)) == pushed.config_digest
        with pytest.raises(grpc.RpcError) as err:
            pull(d, pushed.reference, api.AuthConfig(auth="%%% not base64"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        d.stop()


def test_auth_file_from_config(daemon_dirs, tmp_path, registry, auth_registry, push_image):
    conf = write_registries_conf(tmp_path / "registries.conf", [registry.host, auth_registry.host])
    user, password = auth_registry.auth
    auth_file = tmp_path / "auth.json"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    auth_file.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    pushed = push_image(registry=auth_registry)
    d = Daemon(daemon_dirs, "--registries-conf", str(conf), "--global-auth-file", str(auth_file)).start()
    try:
        assert pull(d, pushed.reference) == pushed.config_digest
    finally:
        d.stop()


def _blob_data_file(registry, digest: str) -> Path:
    hexpart = digest.split(":", 1)[1]
    return registry.storage_dir / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexpart[:2] / hexpart / "data"


def test_corrupted_blob_fails_and_leaves_nothing(image_daemon, registry, push_image):
    extra = LayerBuilder().file("payload.bin", os.urandom(300_000))
    pushed = push_image(extra_layers=[extra], compression="none")
    data = _blob_data_file(registry, pushed.layer_digests[-1])
    raw = bytearray(data.read_bytes())
    raw[-2000] ^= 0xFF  # inside the payload file: still a valid tar, wrong digest
    data.write_bytes(bytes(raw))
    with pytest.raises(grpc.RpcError) as err:
        pull(image_daemon, pushed.reference)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "digest" in err.value.details()
    dirs = store_dirs(image_daemon)
    assert dirs["records"] == [] and dirs["tmp"] == []
    # The intact base layer may stay (it verified); the corrupt one must not.
    assert chain_ids(pushed.diff_ids)[-1].split(":")[1] not in dirs["layers"]
    assert not status(image_daemon, pushed.reference).HasField("image")


def test_truncated_blob_fails_and_leaves_nothing(image_daemon, registry, push_image):
    extra = LayerBuilder().file("payload.bin", os.urandom(300_000))
    pushed = push_image(extra_layers=[extra], compression="gzip")
    data = _blob_data_file(registry, pushed.layer_digests[-1])
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(grpc.RpcError) as err:
        pull(image_daemon, pushed.reference)
    assert err.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
    dirs = store_dirs(image_daemon)
    assert dirs["records"] == [] and dirs["tmp"] == []
    assert chain_ids(pushed.diff_ids)[-1].split(":")[1] not in dirs["layers"]
    assert image_daemon.client.version().runtime_name == "crio-fast"


def test_hostile_layer_cannot_write_outside(image_daemon, push_image, tmp_path):
    outside = image_daemon.dirs.root / "images" / "escaped"
    evil = LayerBuilder().symlink("up", "../../../../../../..").file("up/" + str(outside).lstrip("/"), "pwned")
    pushed = push_image(extra_layers=[evil])
    try:
        pull(image_daemon, pushed.reference)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not outside.exists()
    assert image_daemon.client.version().runtime_name == "crio-fast"


def test_concurrent_pulls_fetch_each_layer_once(image_daemon, registry, push_image):
    extra = LayerBuilder().file("big.bin", os.urandom(2_000_000))
    pushed = push_image(extra_layers=[extra])
    results: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(pull(image_daemon, pushed.reference))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results == [pushed.config_digest] * 4
    log = registry.log_path.read_text(errors="replace")
    for digest in pushed.layer_digests:
        gets = [line for line in log.splitlines() if f"GET /v2/{pushed.repository}/blobs/{digest}" in line]
        assert len(gets) == 1, gets


def test_remove_by_tag_id_and_digest_then_repull(image_daemon, push_image):
    first = push_image(cmd=["one"])
    second = push_image(cmd=["two"])  # shares the busybox base layer
    pull(image_daemon, first.reference)
    pull(image_daemon, second.reference)
    shared = chain_ids(first.diff_ids)[0]
    assert shared == chain_ids(second.diff_ids)[0]

    image_daemon.client.image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=first.reference)), timeout=10)
    assert not status(image_daemon, first.reference).HasField("image")
    assert layer_root(image_daemon, shared).exists(), "a layer another image uses must stay"

    image_daemon.client.image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=second.digest_reference)), timeout=10)
    assert_store_empty(image_daemon)
    # Removing what is not there is not an error (CRI).
    image_daemon.client.image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=second.reference)), timeout=10)

    image_id = pull(image_daemon, first.reference)
    image_daemon.client.image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image=image_id)), timeout=10)
    assert_store_empty(image_daemon)


def test_images_survive_restart(daemon_dirs, registries_conf, push_image):
    pushed = push_image()
    d = Daemon(daemon_dirs, "--registries-conf", str(registries_conf)).start()
    try:
        pull(d, pushed.reference)
    finally:
        assert d.stop() == 0
    d = Daemon(daemon_dirs, "--registries-conf", str(registries_conf)).start()
    try:
        assert status(d, pushed.reference).image.id == pushed.config_digest
    finally:
        d.stop()


def test_image_fs_info_counts_real_usage(image_daemon, push_image):
    empty = image_daemon.client.image.ImageFsInfo(api.ImageFsInfoRequest(), timeout=10).image_filesystems[0]
    pushed = push_image()
    pull(image_daemon, pushed.reference)
    fs = image_daemon.client.image.ImageFsInfo(api.ImageFsInfoRequest(), timeout=10).image_filesystems[0]
    assert fs.used_bytes.value - empty.used_bytes.value > 1_000_000
    assert fs.inodes_used.value > empty.inodes_used.value + 10  # busybox plus its applet links
    assert fs.fs_id.mountpoint.startswith(str(image_daemon.dirs.root))


def test_bad_names_and_blocked_registry(daemon_dirs, tmp_path, registry, push_image):
    pushed = push_image()
    conf = write_registries_conf(
        tmp_path / "registries.conf", [registry.host],
        extra='\n[[registry]]\nlocation = "blocked.example:5000"\nblocked = true\n',
    )
    d = Daemon(daemon_dirs, "--registries-conf", str(conf)).start()
    try:
        for bad in ("example.invalid/UPPER:1", "a@sha256:123", "::"):
            with pytest.raises(grpc.RpcError) as err:
                pull(d, bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        with pytest.raises(grpc.RpcError) as err:
            pull(d, "blocked.example:5000/x/y:1")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "blocked" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            pull(d, f"{pushed.registry}/{pushed.repository}:no-such-tag")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no-such-tag" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            pull(d, "")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        d.stop()


def test_cli_image_import_and_ls(daemon_dirs, tmp_path, push_image):
    """An OCI layout archive loads through `crio-fast image import` into the daemon's store."""
    from tests.support.images import build_image, make_layer, busybox_layer

    built = build_image([make_layer(busybox_layer(), "gzip", "oci")], cmd=["sh"])
    layout = tmp_path / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for digest, data in [(built.digest, built.manifest), (built.config_digest, built.config)] + [
        (l.digest, l.blob) for l in built.layers
    ]:
        (blobs / digest.split(":")[1]).write_bytes(data)
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": built.manifest_media_type, "digest": built.digest, "size": len(built.manifest),
            "annotations": {"org.opencontainers.image.ref.name": "example.test/imported/busybox:1.0"},
        }],
    }
    (layout / "index.json").write_text(json.dumps(index))
    archive = tmp_path / "image.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "."], check=True)

    result = run_cli(daemon_dirs, "image", "import", str(archive))
    assert result.returncode == 0, result.stderr
    assert built.config_digest in result.stdout
    listing = run_cli(daemon_dirs, "image", "ls")
    assert "example.test/imported/busybox:1.0" in listing.stdout

    d = Daemon(daemon_dirs).start()
    try:
        assert status(d, "example.test/imported/busybox:1.0").image.id == built.config_digest
    finally:
        d.stop()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    result = run_cli(daemon_dirs, "image", "import", str(bad))
    assert result.returncode != 0
    assert "bad.tar" in result.stderr


def test_cli_import_docker_archive(daemon_dirs, tmp_path):
    """A docker-archive (as `docker save` writes it) with uncompressed layer tars."""
    from tests.support.images import build_image, busybox_layer, make_layer

    layer = make_layer(busybox_layer(), "none", "docker")
    built = build_image([layer], media="docker", cmd=["sh"])
    root = tmp_path / "archive"
    (root / "abc").mkdir(parents=True)
    (root / "abc" / "layer.tar").write_bytes(layer.blob)
    config_name = built.config_digest.split(":")[1] + ".json"
    (root / config_name).write_bytes(built.config)
    (root / "manifest.json").write_text(json.dumps(
        [{"Config": config_name, "RepoTags": ["example.test/saved:2"], "Layers": ["abc/layer.tar"]}]
    ))
    archive = tmp_path / "saved.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "manifest.json", config_name, "abc"], check=True)
    result = run_cli(daemon_dirs, "image", "import", str(archive))
    assert result.returncode == 0, result.stderr
    assert "example.test/saved:2" in run_cli(daemon_dirs, "image", "ls").stdout

    # A layer whose content does not match the config's diff_id is refused, and leaves nothing.
    tampered = bytearray(layer.blob)
    tampered[layer.blob.index(b"\x7fELF") + 5000] ^= 0xFF  # inside busybox's file data
    (root / "abc" / "layer.tar").write_bytes(bytes(tampered))
    (root / "manifest.json").write_text(json.dumps(
        [{"Config": config_name, "RepoTags": ["example.test/tampered:1"], "Layers": ["abc/layer.tar"]}]
    ))
    subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "manifest.json", config_name, "abc"], check=True)
    # The image is already present (same config): remove it first so the layer must be re-read.
    d = Daemon(daemon_dirs).start()
    try:
        d.client.image.RemoveImage(api.RemoveImageRequest(image=api.ImageSpec(image="example.test/saved:2")), timeout=10)
    finally:
        d.stop()
    result = run_cli(daemon_dirs, "image", "import", str(archive))
    assert result.returncode != 0
    assert "diff_id" in result.stderr
    assert os.listdir(daemon_dirs.root / "images" / "layers") == []
    assert os.listdir(daemon_dirs.root / "images" / "tmp") == []


def test_insecure_registries_setting_allows_a_plain_http_registry(daemon_dirs, tmp_path, registry, push_image):
    pushed = push_image()
    conf = tmp_path / "registries.conf"
    conf.write_text("")  # nothing in registries.conf makes the test registry insecure
    d = Daemon(daemon_dirs, "--registries-conf", str(conf)).start()
    try:
        with pytest.raises(grpc.RpcError) as err:
            pull(d, pushed.reference)
        # cri-api's RegistryUnavailable, as the kubelet reads it: UNKNOWN, the message starting with the name.
        assert err.value.code() == grpc.StatusCode.UNKNOWN, err.value.details()
        assert err.value.details().startswith("RegistryUnavailable: pulling image "), err.value.details()
    finally:
        d.stop()
    d = Daemon(daemon_dirs, "--registries-conf", str(conf), "--insecure-registry", registry.host).start()
    try:
        assert pull(d, pushed.reference) == pushed.config_digest
    finally:
        d.stop()


def test_pull_through_mirror_then_primary(daemon_dirs, tmp_path, registry, push_image):
    """A mirror that has the image serves it; one that lacks it falls back to the primary."""
    from tests.support.registry import RegistryServer

    mirror = RegistryServer(tmp_path / "mirror")
    mirror.start()
    try:
        on_both = push_image(repository="mirrored/app")
        push_image(repository="mirrored/app", registry=mirror)  # same build: same digests
        only_primary = push_image(repository="mirrored/other")
        conf = tmp_path / "registries.conf"
        conf.write_text(
            f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n'
            f'[[registry]]\nlocation = "{mirror.host}"\ninsecure = true\n'
        )
        d = Daemon(daemon_dirs, "--registries-conf", str(conf)).start()
        try:
            assert pull(d, on_both.reference) == on_both.config_digest
            mirror_log = mirror.log_path.read_text(errors="replace")
            primary_log = registry.log_path.read_text(errors="replace")
            layer = on_both.layer_digests[0]
            assert f"GET /v2/mirrored/app/blobs/{layer}" in mirror_log
            assert f"GET /v2/mirrored/app/blobs/{layer}" not in primary_log
            # The name stays the primary's, whichever endpoint served it.
            assert list(status(d, on_both.reference).image.repo_tags) == [on_both.reference]
            assert pull(d, only_primary.reference) == only_primary.config_digest
        finally:
            d.stop()
    finally:
        mirror.stop()


def test_pull_cancelled_by_its_client_stops_and_leaves_no_work_behind(image_daemon, push_image):
    """The pull runs on the daemon's loop for a handler thread; when the client's deadline ends the
    call, the pull is cancelled: no image record, nothing left under tmp/ (a layer already being
    extracted may still land, whole), and a new pull works."""
    big = LayerBuilder().file("big.bin", os.urandom(96 << 20))
    pushed = push_image(repository="test/big", extra_layers=[big])
    request = api.PullImageRequest(image=api.ImageSpec(image=pushed.reference))
    with pytest.raises(grpc.RpcError) as err:
        image_daemon.client.image.PullImage(request, timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: store_dirs(image_daemon)["tmp"] == [], timeout=30, what="the cancelled pull to clean up")
    time.sleep(3)  # a pull that went on would have written its record by now
    assert store_dirs(image_daemon)["records"] == []
    assert not status(image_daemon, pushed.reference).HasField("image")
    assert pull(image_daemon, pushed.reference).startswith("sha256:")
    assert status(image_daemon, pushed.reference).image.size > 96 << 20
