"""Session fixture ``s3_endpoint``: a moto S3 server on 127.0.0.1 (a free port) with dummy credentials.

Tests that need S3 (checkpoints, MLflow artifacts) use its URL; the AWS settings are put in the
environment for the whole session, so boto3 and MLflow find the server without extra arguments.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Endpoint:
    url: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url)

    def create_bucket(self, name: str) -> str:
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return [o["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {key: os.environ.get(key) for key in [*S3_ENV, "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"]}
    url = f"http://127.0.0.1:{port}"
    os.environ.update(S3_ENV)
    os.environ["AWS_ENDPOINT_URL"] = url
    os.environ["MLFLOW_S3_ENDPOINT_URL"] = url
    try:
        yield S3Endpoint(url)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
