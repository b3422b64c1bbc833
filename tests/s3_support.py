"""moto's S3 server for the tests that reach shared storage: the ``s3_server`` (one process per
test module, on a loopback port) and ``s3`` (a fresh bucket per test) fixtures. Import both into
a test module (``from s3_support import s3, s3_server``); the module should first skip itself
where s3fs or moto[server] are missing (``pytest.importorskip``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

#: Credentials moto accepts (any do); children that reach the server need them in their environment.
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server in its own process on a loopback port; its endpoint URL."""
    port = _free_port()
    env = {**os.environ, **S3_ENV}
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.fixture
def s3(s3_server):
    """A fresh bucket: (registry URL, storage options, an s3fs client of its own)."""
    import s3fs

    options = {"endpoint_url": s3_server, "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "eu-west-1"}}
    bucket = f"vortex-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir(bucket)
    return f"s3://{bucket}/home/models", options, fs


def _client(options):
    import boto3

    return boto3.client("s3", endpoint_url=options["endpoint_url"], region_name="eu-west-1",
                        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])


def enable_versioning(options, url):
    """Keep every version of every object of ``url``'s bucket from now on."""
    _client(options).put_bucket_versioning(Bucket=url[len("s3://"):].split("/", 1)[0],
                                           VersioningConfiguration={"Status": "Enabled"})


def object_versions(options, url):
    """The bytes of every version of the object at ``url``, oldest first."""
    client = _client(options)
    bucket, key = url[len("s3://"):].split("/", 1)
    listed = client.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]  # newest first
    return [client.get_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])["Body"].read()
            for v in reversed(listed) if v["Key"] == key]
