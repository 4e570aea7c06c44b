"""Looking at what the stages wrote: S3 objects and versions, WAV contents, Postgres rows, and a
Weaviate client for a test's own collections."""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np
from botocore.exceptions import ClientError
from calls import SimCall

from stream_processor.stores.archive import call_keys


def keys_of(call: SimCall):
    return call_keys(call.call_id, datetime.fromtimestamp(call.started_at_us / 1e6, tz=timezone.utc))


def get_json(s3, bucket: str, key: str) -> dict | None:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise


def exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404", "NotFound"):
            return False
        raise


def versions(s3, bucket: str, prefix: str) -> list[dict]:
    resp = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
    return resp.get("Versions", []) + resp.get("DeleteMarkers", [])


def read_wav(s3, bucket: str, key: str) -> tuple[wave._wave_params, np.ndarray, bytes]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with wave.open(io.BytesIO(body)) as w:
        params = w.getparams()
        frames = np.frombuffer(w.readframes(params.nframes), dtype="<i2").reshape(-1, params.nchannels)
    return params, frames, body


def row_of(pg, call_id: str) -> dict | None:
    cur = pg.execute("SELECT * FROM companion_calls WHERE call_id = %s", (call_id,))
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d.name for d in cur.description], row))


@contextmanager
def weaviate_client(settings, drop: Iterable[str] = ()) -> Iterator:
    """A Weaviate client on the settings' host and ports (``LUPITA_WEAVIATE_*``, as the session
    exports them); the collections named in ``drop`` (a test's own) are deleted at the end."""
    import weaviate

    client = weaviate.connect_to_custom(
        http_host=settings.weaviate_host, http_port=settings.weaviate_http_port, http_secure=False,
        grpc_host=settings.weaviate_host, grpc_port=settings.weaviate_grpc_port, grpc_secure=False,
    )
    try:
        yield client
    finally:
        for name in drop:
            client.collections.delete(name)
        client.close()
