"""The registry client against a real registry (docker-registry on 127.0.0.1).

Behaviour the stock registry cannot show (server errors, dropped connections,
redirects to a storage host, Bearer token servers, schema 1 manifests) comes
from small aiohttp servers on 127.0.0.1 that sit in front of the real registry
and forward to it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable

import aiohttp
import pytest
from aiohttp import web

from crio_fast.image.auth import Credentials, load_auth_file
from crio_fast.image.reference import parse_reference
from crio_fast.image.registries import Endpoint, RegistriesConfig, RegistryBlocked
from crio_fast.image.manifest import (
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
)
from crio_fast.image.platforms import node_platform, select_platform
from crio_fast.image.registry_client import RegistryClient
from crio_fast.image.registry_errors import (
    BlobUnknown,
    DigestMismatch,
    ManifestUnknown,
    NoMatchingPlatform,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
    UnsupportedManifest,
)
from crio_fast.image.registry_http import BLOB_CHUNK_SIZE
from crio_fast.image.resolve import resolve
from tests.support.registries_conf import write_registries_conf
from tests.support.images import LayerBuilder, PushedImage
from tests.support.images import push_image as push_to
from tests.support.registry import RegistryServer, free_port

pytestmark = pytest.mark.integration

FAST = {"retries": 3, "backoff": 0.01, "connect_timeout": 5.0, "read_timeout": 10.0}


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)


def insecure(host: str) -> Endpoint:
    return Endpoint(host, insecure=True, is_mirror=False)


@asynccontextmanager
async def client_for(host: str, credentials: Credentials | None = None, **options: Any) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(insecure(host), credentials, **{**FAST, **options}) as client:
        yield client


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1:<free port>; yields host:port."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


async def forward(request: web.Request, upstream: str, path: str | None = None) -> web.Response:
    """Relay a GET to the real registry and return its answer as it is."""
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "authorization")}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(f"http://{upstream}{path or request.path_qs}", headers=headers, allow_redirects=False) as up:
            body = await up.read()
            keep = {k: v for k, v in up.headers.items() if k.lower() in ("content-type", "docker-content-digest", "www-authenticate", "location")}
            return web.Response(status=up.status, body=body, headers=keep)


async def read_all(client: RegistryClient, repository: str, digest: str) -> tuple[bytes, list[int]]:
    chunks = [c async for c in client.open_blob(repository, digest)]
    return b"".join(chunks), [len(c) for c in chunks]


# -- manifests ------------------------------------------------------------------------------


def test_manifest_by_tag_and_by_digest(registry: RegistryServer, busybox_image: PushedImage):
    async def main():
        async with client_for(registry.host) as client:
            by_tag = await client.get_manifest("test/busybox", "latest")
            by_digest = await client.get_manifest("test/busybox", busybox_image.manifest_digest)
            return client.scheme, by_tag, by_digest

    scheme, by_tag, by_digest = run(main())
    assert scheme == "http"  # insecure: the TLS attempt failed, plain HTTP was the fallback
    assert by_tag.digest == busybox_image.manifest_digest == by_digest.digest
    assert by_tag.raw == by_digest.raw
    assert by_tag.media_type == MEDIA_TYPE_OCI_MANIFEST and not by_tag.is_index
    assert by_tag.config.digest == busybox_image.config_digest
    assert [l.digest for l in by_tag.layers] == busybox_image.layer_digests
    assert by_tag.layers[0].media_type.endswith("tar+gzip") and by_tag.layers[0].size > 500_000


def test_docker_media_types(push_image):
    pushed = push_image(media="docker", compression="gzip")

    async def main():
        async with client_for(pushed.registry) as client:
            return await client.get_manifest(pushed.repository, pushed.tag)

    manifest = run(main())
    assert manifest.media_type == MEDIA_TYPE_DOCKER_MANIFEST
    assert manifest.digest == pushed.manifest_digest
    assert manifest.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"


def test_unknown_tag_and_repository_carry_the_registry_message(registry: RegistryServer, busybox_image: PushedImage):
    async def main():
        errors = []
        async with client_for(registry.host) as client:
            for repo, ref in (("test/busybox", "no-such-tag"), ("test/no-such-repo", "latest")):
                with pytest.raises(ManifestUnknown) as info:
                    await client.get_manifest(repo, ref)
                errors.append(str(info.value))
            with pytest.raises(BlobUnknown) as info:
                await read_all(client, "test/busybox", "sha256:" + "0" * 64)
            errors.append(str(info.value))
        return errors

    tag_error, repo_error, blob_error = run(main())
    assert tag_error.startswith(f"{registry.host}/test/busybox: ") and "MANIFEST_UNKNOWN" in tag_error
    assert "no-such-tag" in tag_error
    assert repo_error.startswith(f"{registry.host}/test/no-such-repo: ") and "UNKNOWN" in repo_error
    assert "BLOB_UNKNOWN" in blob_error


def test_secure_endpoint_never_falls_back_to_plain_http(registry: RegistryServer, busybox_image: PushedImage):
    async def main():
        async with RegistryClient(Endpoint(registry.host, insecure=False), None, **FAST) as client:
            await client.get_manifest("test/busybox", "latest")

    with pytest.raises(RegistryUnavailable) as info:
        run(main())
    assert registry.host in str(info.value) and "https" in str(info.value)


# -- multi-arch ----------------------------------------------------------------------------


@pytest.mark.parametrize("media,index_type", [("oci", MEDIA_TYPE_OCI_INDEX), ("docker", MEDIA_TYPE_DOCKER_MANIFEST_LIST)])
def test_index_selects_this_nodes_platform(push_image, registries_conf: Path, media, index_type):
    pushed = push_image(multi_arch=True, media=media)
    native = node_platform()
    foreign = next(p for p in pushed.platforms if p != str(native))
    foreign_os, foreign_arch, *foreign_variant = foreign.split("/")

    async def main():
        config = RegistriesConfig.load(str(registries_conf))
        resolved = await resolve(parse_reference(pushed.reference), config, lambda _: None, client_options=FAST)
        try:
            index = resolved.index
            explicit = select_platform(index, foreign_os, foreign_arch, foreign_variant[0] if foreign_variant else None)
            with pytest.raises(NoMatchingPlatform) as info:
                select_platform(index, "linux", "s390x", host=resolved.client.host, repository=pushed.repository)
            return resolved, explicit, str(info.value)
        finally:
            await resolved.client.close()

    resolved, explicit, no_match = run(main())
    assert resolved.index is not None and resolved.index.media_type == index_type
    assert resolved.index_digest == pushed.index_digest == resolved.repo_digest
    assert resolved.manifest_digest == pushed.manifest_digest == pushed.platforms[str(native)]
    assert resolved.platform is not None and resolved.platform.architecture == native.architecture
    assert resolved.config.digest == pushed.config_digest
    assert explicit.digest == pushed.platforms[foreign]
    assert "linux/s390x" in no_match and str(native) in no_match and foreign in no_match
    assert no_match.startswith(f"{pushed.registry}/{pushed.repository}: ")


# -- blobs ---------------------------------------------------------------------------------


def test_blob_streams_in_chunks_and_config_is_verified(registry: RegistryServer, busybox_image: PushedImage):
    async def main():
        async with client_for(registry.host) as client:
            manifest = await client.get_manifest("test/busybox", "latest")
            layer = manifest.layers[0]
            data, sizes = await read_all(client, "test/busybox", layer.digest)
            config = await client.get_blob_bytes("test/busybox", busybox_image.config_digest, 1 << 20)
            with pytest.raises(RegistryError, match="more than the 10 allowed"):
                await client.get_blob_bytes("test/busybox", busybox_image.config_digest, 10)
            return layer, data, sizes, config

    layer, data, sizes, config = run(main())
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
    assert len(data) == layer.size and max(sizes) <= BLOB_CHUNK_SIZE and len(sizes) > 1
    assert json.loads(config)["rootfs"]["diff_ids"] == busybox_image.diff_ids


def test_blob_digest_mismatch_on_small_blobs_is_detected(registry: RegistryServer, busybox_image: PushedImage):
    """A front that serves the wrong bytes for a digest: get_blob_bytes refuses them."""

    async def wrong_blob(request: web.Request) -> web.StreamResponse:
        if "/blobs/" in request.path:
            return await forward(request, registry.host, f"/v2/test/busybox/blobs/{busybox_image.layer_digests[0]}")
        return await forward(request, registry.host)

    async def main():
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", wrong_blob)
        async with serve(app) as front, client_for(front) as client:
            with pytest.raises(DigestMismatch) as info:
                await client.get_blob_bytes("test/busybox", busybox_image.config_digest, 8 << 20)
            return front, str(info.value)

    front, message = run(main())
    assert message.startswith(f"{front}/test/busybox: ") and busybox_image.config_digest in message


# -- auth ----------------------------------------------------------------------------------


def test_basic_auth_good_missing_and_bad_credentials(auth_registry: RegistryServer):
    pushed = push_to(auth_registry, "private/busybox", compression="zstd")

    async def attempt(credentials):
        async with client_for(auth_registry.host, credentials) as client:
            return await client.get_manifest("private/busybox", "latest")

    manifest = run(attempt(Credentials(auth_registry.username, auth_registry.password)))
    assert manifest.digest == pushed.manifest_digest
    assert manifest.layers[0].media_type.endswith("+zstd")
    with pytest.raises(RegistryAuthError, match="no credentials are configured"):
        run(attempt(None))
    with pytest.raises(RegistryAuthError, match=r"credentials for user 'tester' were rejected") as info:
        run(attempt(Credentials(auth_registry.username, "wrong")))
    assert str(info.value).startswith(f"{auth_registry.host}/private/busybox: ")


def test_resolve_takes_credentials_from_an_auth_file(auth_registry: RegistryServer, registries_conf: Path, tmp_path: Path):
    pushed = push_to(auth_registry, "private/from-file")
    auth_file = tmp_path / "auth.json"
    token = base64.b64encode(f"{auth_registry.username}:{auth_registry.password}".encode()).decode()
    auth_file.write_text(json.dumps({"auths": {f"http://{auth_registry.host}/v1/": {"auth": token}}}))
    asked = []

    def credentials_for(name: str) -> Credentials | None:
        asked.append(name)
        return load_auth_file(name, auth_file)

    async def main():
        config = RegistriesConfig.load(str(registries_conf))
        resolved = await resolve(parse_reference(pushed.reference), config, credentials_for, client_options=FAST)
        await resolved.client.close()
        return resolved

    resolved = run(main())
    assert resolved.manifest_digest == pushed.manifest_digest
    assert asked == [f"{auth_registry.host}/private/from-file"]


def _bearer_front(upstream: str, counters: dict[str, int]) -> web.Application:
    """A registry front that demands Bearer tokens from its own token endpoint."""
    good_basic = "Basic " + base64.b64encode(b"alice:secret").decode()

    async def token(request: web.Request) -> web.Response:
        scope = request.query.get("scope", "")
        if request.method == "POST":
            form = await request.post()
            counters["oauth"] += 1
            if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != "refresh-123":
                return web.json_response({"details": "invalid refresh token"}, status=401)
            return web.json_response({"access_token": f"tok:{form.get('scope')}", "expires_in": 300})
        counters["token"] += 1
        if request.headers.get("Authorization") not in (None, good_basic):
            return web.json_response({"details": "incorrect username or password"}, status=401)
        if request.query.get("service") != "test-registry":
            return web.json_response({"details": "wrong service"}, status=400)
        anonymous = "Authorization" not in request.headers
        return web.json_response({"token": f"{'anon' if anonymous else 'tok'}:{scope}", "expires_in": 300})

    async def v2(request: web.Request) -> web.StreamResponse:
        repository = request.match_info.get("repo", "")
        expected = {f"Bearer tok:repository:{repository}:pull", "Bearer static-registry-token"}
        if request.path == "/v2/" or request.headers.get("Authorization") not in expected:
            scope = f',scope="repository:{repository}:pull"' if repository else ""
            realm = f"http://{request.host}/token"
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401,
                headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="test-registry"{scope}'},
            )
        counters["served"] += 1
        return await forward(request, upstream)

    app = web.Application()
    app.router.add_route("*", "/token", token)
    app.router.add_get("/v2/", v2)
    app.router.add_get("/v2/{repo:.+}/{kind:manifests|blobs}/{ref}", v2)
    return app


def test_bearer_token_flow(registry: RegistryServer, busybox_image: PushedImage):
    counters = {"token": 0, "oauth": 0, "served": 0}

    async def main():
        async with serve(_bearer_front(registry.host, counters)) as front:
            async with client_for(front, Credentials("alice", "secret")) as client:
                first = await client.get_manifest("test/busybox", "latest")
                await client.get_manifest("test/busybox", first.digest)
                config = await client.get_blob_bytes("test/busybox", first.config.digest, 1 << 20)
            token_requests_with_password = counters["token"]

            async with client_for(front, Credentials(identity_token="refresh-123")) as client:
                await client.get_manifest("test/busybox", "latest")

            async with client_for(front, Credentials(registry_token="static-registry-token")) as client:
                await client.get_manifest("test/busybox", "latest")

            with pytest.raises(RegistryAuthError, match="credentials for user 'alice' were rejected") as bad:
                async with client_for(front, Credentials("alice", "nope")) as client:
                    await client.get_manifest("test/busybox", "latest")
            with pytest.raises(RegistryAuthError, match="identity token was rejected"):
                async with client_for(front, Credentials(identity_token="stale")) as client:
                    await client.get_manifest("test/busybox", "latest")
            with pytest.raises(RegistryAuthError, match="no credentials are configured"):
                async with client_for(front) as client:  # anonymous tokens do not grant pulls here
                    await client.get_manifest("test/busybox", "latest")
            return front, first, config, token_requests_with_password, str(bad.value)

    front, first, config, token_requests, bad = run(main())
    assert first.digest == busybox_image.manifest_digest
    assert hashlib.sha256(config).hexdigest() == busybox_image.config_digest.split(":")[1]
    assert token_requests == 1  # one token for the scope, reused by the next two requests
    assert counters["oauth"] == 2  # refresh-token POSTs: one accepted, one refused
    assert counters["served"] == 5  # 3 (password) + 1 (identity token) + 1 (registry token)
    assert bad.startswith(f"{front}/test/busybox: ") and "incorrect username or password" in bad


# -- failures, retries, redirects -------------------------------------------------------------


def test_server_errors_are_retried_then_given_up(registry: RegistryServer, busybox_image: PushedImage):
    state = {"fail": 2, "requests": 0}

    async def flaky(request: web.Request) -> web.StreamResponse:
        state["requests"] += 1
        if request.path != "/v2/" and state["fail"] > 0:
            state["fail"] -= 1
            return web.Response(status=503 if state["fail"] else 429, text="try later")
        return await forward(request, registry.host)

    async def main():
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", flaky)
        async with serve(app) as front:
            async with client_for(front) as client:
                manifest = await client.get_manifest("test/busybox", "latest")
            requests_for_success = state["requests"]
            state["fail"] = 10
            with pytest.raises(RegistryUnavailable) as info:
                async with client_for(front, retries=2) as client:
                    await client.get_manifest("test/busybox", "latest")
            return front, manifest, requests_for_success, str(info.value)

    front, manifest, requests, message = run(main())
    assert manifest.digest == busybox_image.manifest_digest
    # https probe (fails at TLS, never reaches the handler) + /v2/ + 2 failures + 1 success.
    assert requests == 4
    assert message.startswith(f"{front}/test/busybox: ") and "failed after 2 attempts" in message and "HTTP 503" in message


def test_blob_retried_before_first_byte_but_not_after(registry: RegistryServer, busybox_image: PushedImage):
    layer_digest = busybox_image.layer_digests[0]
    state = {"drop_before": 1, "blob_requests": 0, "truncate": False}

    async def dropping(request: web.Request) -> web.StreamResponse:
        if "/blobs/" not in request.path:
            return await forward(request, registry.host)
        state["blob_requests"] += 1
        if state["drop_before"] > 0:
            state["drop_before"] -= 1
            request.transport.close()  # connection dropped before any byte of the response
            return web.Response(status=500)
        upstream = await forward(request, registry.host)
        if not state["truncate"]:
            return upstream
        response = web.StreamResponse(headers={"Content-Length": str(len(upstream.body))})
        await response.prepare(request)
        await response.write(upstream.body[: 3 * BLOB_CHUNK_SIZE // 2])
        await asyncio.sleep(0.05)
        request.transport.close()  # ...and in the middle of the body
        return response

    async def main():
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", dropping)
        async with serve(app) as front, client_for(front) as client:
            data, _ = await read_all(client, "test/busybox", layer_digest)
            requests_after_success = state["blob_requests"]
            state["truncate"] = True
            received = 0
            with pytest.raises(RegistryUnavailable) as info:
                async for chunk in client.open_blob("test/busybox", layer_digest):
                    received += len(chunk)
            return data, requests_after_success, received, str(info.value)

    data, requests, received, message = run(main())
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer_digest
    assert requests == 2  # the dropped attempt, then the good one
    assert state["blob_requests"] == 3  # the truncated stream was not retried
    assert 0 < received < 3 * BLOB_CHUNK_SIZE // 2 + 1
    assert "broke off after" in message and layer_digest in message


def test_blob_redirect_to_storage_host_drops_authorization(registry: RegistryServer, busybox_image: PushedImage):
    layer_digest = busybox_image.layer_digests[0]
    good = "Basic " + base64.b64encode(b"bob:pw").decode()
    seen: dict[str, list[str | None]] = {"front": [], "storage": []}

    async def storage(request: web.Request) -> web.StreamResponse:
        seen["storage"].append(request.headers.get("Authorization"))
        if request.query.get("sig") != "abc":
            return web.Response(status=403)
        return await forward(request, registry.host, f"/v2/test/busybox/blobs/{request.match_info['digest']}")

    def front_app(storage_host: str) -> web.Application:
        async def front(request: web.Request) -> web.StreamResponse:
            authorization = request.headers.get("Authorization")
            if request.path != "/v2/":
                seen["front"].append(authorization)
            if authorization != good:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="front"'})
            if "/blobs/" in request.path:
                digest = request.path.rsplit("/", 1)[1]
                if request.query.get("hop") != "1":  # first a relative redirect on the same host
                    raise web.HTTPTemporaryRedirect(f"{request.path}?hop=1")
                raise web.HTTPTemporaryRedirect(f"http://{storage_host}/store/{digest}?sig=abc")
            return await forward(request, registry.host)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", front)
        return app

    async def main():
        storage_app = web.Application()
        storage_app.router.add_get("/store/{digest}", storage)
        async with serve(storage_app) as storage_host, serve(front_app(storage_host)) as front:
            async with client_for(front, Credentials("bob", "pw")) as client:
                data, _ = await read_all(client, "test/busybox", layer_digest)
        return data

    data = run(main())
    assert "sha256:" + hashlib.sha256(data).hexdigest() == layer_digest
    assert seen["storage"] == [None]  # credentials never left the registry host
    assert seen["front"] and all(a == good for a in seen["front"][-2:])  # both same-host hops authenticated


def test_schema1_manifests_are_refused(busybox_image: PushedImage):
    schema1 = json.dumps({"schemaVersion": 1, "name": "old/app", "tag": "latest", "fsLayers": [], "history": []}).encode()

    async def old_registry(request: web.Request) -> web.Response:
        if request.path == "/v2/":
            return web.json_response({})
        if request.path.endswith("/signed"):
            return web.Response(body=schema1, content_type="application/vnd.docker.distribution.manifest.v1+prettyjws")
        return web.Response(body=schema1, content_type="application/json")

    async def main():
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", old_registry)
        messages = []
        async with serve(app) as front, client_for(front) as client:
            for tag in ("signed", "plain"):
                with pytest.raises(UnsupportedManifest) as info:
                    await client.get_manifest("old/app", tag)
                messages.append(str(info.value))
        return front, messages

    front, messages = run(main())
    for message in messages:
        assert message.startswith(f"{front}/old/app: ") and "schema 1" in message and "not supported" in message


# -- resolve over registries.conf ----------------------------------------------------------------


def test_short_name_resolves_through_search_registry(registry: RegistryServer, busybox_image: PushedImage, registries_conf: Path):
    async def main():
        config = RegistriesConfig.load(str(registries_conf))
        (candidate,) = config.candidates("test/busybox")
        resolved = await resolve(candidate, config, lambda _: None, client_options=FAST)
        await resolved.client.close()
        return candidate, resolved

    candidate, resolved = run(main())
    assert str(candidate) == busybox_image.reference
    assert resolved.endpoint == Endpoint(registry.host, insecure=True, is_mirror=False)
    assert resolved.manifest_digest == busybox_image.manifest_digest and resolved.index is None
    assert [l.digest for l in resolved.layers] == busybox_image.layer_digests


def test_mirror_lacking_the_image_falls_back_to_primary(registry: RegistryServer, push_image, tmp_path: Path):
    primary_only = push_image("mirrortest/app", tag="v1", extra_layers=[LayerBuilder().file("/etc/which", "primary")])
    on_mirror = push_image("cache/mirrortest/app", tag="v2", extra_layers=[LayerBuilder().file("/etc/which", "mirror")])
    conf = write_registries_conf(
        tmp_path / "registries.conf",
        [],
        search=[registry.host],
        extra=f"""
[[registry]]
prefix = "primary.example/mirrortest"
location = "{registry.host}/mirrortest"
insecure = true
[[registry.mirror]]
location = "{registry.host}/cache/mirrortest"
insecure = true
""",
    )

    async def main():
        config = RegistriesConfig.load(str(conf))
        from_primary = await resolve(parse_reference("primary.example/mirrortest/app:v1"), config, lambda _: None, client_options=FAST)
        await from_primary.client.close()
        from_mirror = await resolve(parse_reference("primary.example/mirrortest/app:v2"), config, lambda _: None, client_options=FAST)
        await from_mirror.client.close()
        with pytest.raises(ManifestUnknown) as info:
            await resolve(parse_reference("primary.example/mirrortest/app:v3"), config, lambda _: None, client_options=FAST)
        return from_primary, from_mirror, info.value

    from_primary, from_mirror, error = run(main())
    assert not from_primary.endpoint.is_mirror
    assert str(from_primary.reference) == f"{registry.host}/mirrortest/app:v1"
    assert from_primary.manifest_digest == primary_only.manifest_digest
    assert from_mirror.endpoint.is_mirror
    assert str(from_mirror.reference) == f"{registry.host}/cache/mirrortest/app:v2"
    assert from_mirror.manifest_digest == on_mirror.manifest_digest
    # Every endpoint's failure is listed, mirror first.
    assert len(error.failures) == 2 and error.failures[0][0].is_mirror
    message = str(error)
    assert f"mirror {registry.host}/cache/mirrortest/app" in message and f"primary {registry.host}/mirrortest/app" in message


def test_blocked_registry_is_refused(registry: RegistryServer, busybox_image: PushedImage, tmp_path: Path):
    conf = write_registries_conf(
        tmp_path / "registries.conf", [registry.host], extra=f'[[registry]]\nprefix = "{registry.host}/test"\nblocked = true\n'
    )

    async def main():
        config = RegistriesConfig.load(str(conf))
        await resolve(parse_reference(busybox_image.reference), config, lambda _: None, client_options=FAST)

    with pytest.raises(RegistryBlocked, match="blocked"):
        run(main())


def test_unreachable_registry_is_unavailable_naming_it(tmp_path: Path):
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    conf = write_registries_conf(tmp_path / "registries.conf", [host])

    async def main():
        config = RegistriesConfig.load(str(conf))
        await resolve(parse_reference(f"{host}/x/y:1"), config, lambda _: None, client_options={**FAST, "retries": 2})

    with pytest.raises(RegistryUnavailable) as info:
        run(main())
    assert str(info.value).startswith(f"{host}/x/y: ") and "cannot reach the registry" in str(info.value)


# -- platform matching (no server needed) ---------------------------------------------------


def _index(*platforms: str):
    from crio_fast.image.manifest import Manifest

    entries = []
    for number, text in enumerate(platforms):
        os_name, arch, *variant = text.split("/")
        platform = {"os": os_name, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        entries.append({"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": f"sha256:{number:064x}", "size": 1, "platform": platform})
    return Manifest.parse(json.dumps({"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": entries}).encode())


def test_platform_variants_follow_cpu_compatibility():
    index = _index("linux/arm/v5", "linux/arm/v7", "linux/arm/v6", "linux/arm64", "linux/amd64/v3", "linux/amd64", "windows/amd64")
    assert select_platform(index, "linux", "arm", "v7").digest.endswith("1")  # its own variant
    assert select_platform(index, "linux", "arm", "v6").digest.endswith("2")  # not the newer v7
    assert select_platform(_index("linux/arm/v5", "linux/arm/v6"), "linux", "arm", "v7").digest.endswith("1")  # newest it runs
    assert select_platform(index, "linux", "arm64", "v8").digest.endswith("3")  # no variant means v8
    assert select_platform(index, "linux", "amd64").digest.endswith("5")  # v3 needs a newer CPU than assumed
    assert select_platform(index, "windows", "amd64").digest.endswith("6")
    with pytest.raises(NoMatchingPlatform, match=r"linux/arm/v5 \(available: linux/amd64/v3\)"):
        select_platform(_index("linux/amd64/v3"), "linux", "arm", "v5")


def test_node_platform_mapping():
    assert node_platform("x86_64").architecture == "amd64"
    assert (node_platform("aarch64").architecture, node_platform("aarch64").variant) == ("arm64", "v8")
    assert (node_platform("armv7l").architecture, node_platform("armv7l").variant) == ("arm", "v7")
    assert str(node_platform("riscv64")) == "linux/riscv64"
