"""One contract, every storage backend: the local disk and S3.

The S3 backend runs against a real S3-compatible HTTP server: moto's server
mode, started by this module on a free port of 127.0.0.1 (no AWS, no network).
The same API round trip as on local disk runs with ``SUPPORTGATE_STORAGE_BACKEND=s3``.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.storage import LocalStorage, storage_from_settings
from gateway.storage.s3 import S3Storage
from tests.blobs import opaque_bytes
from tests.ports import free_port

BUCKET = "supportgate-test"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    yield url
    server.stop()


@pytest.fixture
def s3_env(monkeypatch) -> None:
    # moto takes any credentials; set them so boto3 never looks elsewhere.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture
def bucket(s3_endpoint: str, s3_env: None, request) -> str:
    import boto3

    name = f"{BUCKET}-{request.node.name.lower()[:20].strip('-_[]')}-{os.urandom(3).hex()}"
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Any:
    if request.param == "local":
        return LocalStorage(tmp_path / "files")
    endpoint = request.getfixturevalue("s3_endpoint")
    name = request.getfixturevalue("bucket")
    return S3Storage(
        name,
        spool=tmp_path / "spool",
        prefix="att/",
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )


@pytest.mark.parametrize("size", [0, 1, 5 * 1024 * 1024 + 3])
def test_put_open_round_trip(storage, size):
    data = opaque_bytes(size, "storage")
    sha, written = storage.put(io.BytesIO(data))
    assert (sha, written) == (hashlib.sha256(data).hexdigest(), size)
    assert storage.exists(sha)
    with storage.open(sha) as f:
        assert f.read() == data
    assert storage.put(io.BytesIO(data))[0] == sha  # stored once, by content
    assert list(storage.iter_hashes()) == [sha]


def test_stage_then_commit(storage):
    staged = storage.stage(max_bytes=100)
    staged.write(b"first ")
    staged.write(b"second")
    assert list(storage.iter_hashes()) == []
    sha, size = storage.commit(staged)
    assert size == 12 and storage.exists(sha)
    staged.discard()
    assert storage.exists(sha)
    assert storage.remove_stale_staging(0) == 0  # nothing left behind


def test_delete_respects_age(storage):
    sha, _ = storage.put(io.BytesIO(b"age"))
    age = storage.age_seconds(sha)
    assert age is not None and age < 60
    assert storage.delete(sha, older_than=60) is False
    assert storage.exists(sha)
    assert storage.delete(sha) is True
    assert not storage.exists(sha)
    assert storage.delete(sha) is False
    assert storage.age_seconds(sha) is None
    with pytest.raises(FileNotFoundError):
        storage.open(sha)


def test_check(storage):
    storage.check()


def test_s3_unknown_bucket_fails_check(s3_endpoint, s3_env, tmp_path):
    storage = S3Storage("no-such-bucket", spool=tmp_path, endpoint_url=s3_endpoint)
    with pytest.raises(Exception):  # noqa: B017 - botocore's ClientError, whatever its code
        storage.check()


def test_s3_keys_are_sharded_under_the_prefix(bucket, s3_endpoint, tmp_path):
    storage = S3Storage(bucket, spool=tmp_path, prefix="p/", endpoint_url=s3_endpoint)
    sha, _ = storage.put(io.BytesIO(b"k"))
    keys = [o["Key"] for o in storage.client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"p/{sha[:2]}/{sha[2:4]}/{sha}"]


def test_api_round_trip_on_s3(s3_endpoint, bucket, settings, db, tmp_path):
    """The whole upload/download/preview/delete path with the S3 backend."""
    from PIL import Image

    from gateway.users.services import add_user_cli
    from web.app import create_app

    s3_settings = settings.model_copy(
        update={
            "storage_backend": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_endpoint,
            "s3_region": "us-east-1",
            "storage_grace_seconds": 0,
        }
    )
    app = create_app(s3_settings, database=db)
    storage = app.extensions["supportgate"].files.storage
    assert isinstance(storage, S3Storage)
    assert isinstance(storage_from_settings(s3_settings), S3Storage)
    client = app.test_client()
    ready = client.get("/readyz").get_json()
    assert ready["checks"]["attachment_storage"] == "ok", ready
    with db.transaction() as session:
        _, token = add_user_cli(session, "agent@example.com", "agent", "Agent", None)
    auth = {"Authorization": f"Bearer {token}"}
    ticket = client.post(
        "/api/v1/tickets", json={"title": "S3", "customer_email": "c@example.org"}, headers=auth
    ).get_json()
    picture = io.BytesIO()
    Image.new("RGB", (300, 200), "blue").save(picture, "JPEG")
    data = picture.getvalue() + os.urandom(3 * 1024 * 1024)  # a JPEG with a long tail
    from werkzeug.datastructures import FileStorage, MultiDict
    from werkzeug.test import encode_multipart

    boundary, body = encode_multipart(MultiDict([("file", FileStorage(io.BytesIO(data), "p.jpg"))]))
    created = client.post(
        f"/api/v1/tickets/{ticket['id']}/attachments",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
        headers=auth,
    )
    assert created.status_code == 201, created.get_json()
    att = created.get_json()
    assert att["sha256"] == hashlib.sha256(data).hexdigest()
    assert att["content_type"] == "image/jpeg"
    got = client.get(att["download_url"], headers=auth)
    assert hashlib.sha256(got.data).hexdigest() == att["sha256"]
    preview = client.get(att["preview_url"], headers=auth)
    assert preview.status_code == 200 and preview.data.startswith(b"\x89PNG")
    assert list(storage.iter_hashes()) == [att["sha256"]]
    assert client.delete(att["download_url"], headers=auth).status_code == 204
    from gateway.policies.jobs import apply_deletion_policy

    apply_deletion_policy(db, storage, grace_seconds=0)
    assert list(storage.iter_hashes()) == []
    assert not list((tmp_path / "data" / "spool").glob(".upload-*"))
