"""Call archive on S3: the legal-archive bucket (Object Lock) and the active copy (plain boto3).

Layout (date = the call's start, UTC)::

    calls/YYYY/MM/DD/{call_id}/audio-full.wav   stereo PCM16, left = Lupita, right = person
    calls/YYYY/MM/DD/{call_id}/consent.json     consent flag, source, timestamp
    calls/YYYY/MM/DD/{call_id}/metadata.json    written last: its presence means "archived"

The legal bucket is versioned and locked (COMPLIANCE default retention), so every write there
is permanent and a second write is a second, undeletable version. Hence each legal object is
written at most once: we look first (HEAD) and write with ``If-None-Match: *`` so that two
writers racing on the same call cannot both create a version (412 = someone else won). Once
``metadata.json`` exists, the stored metadata is the truth and is returned as is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from botocore.exceptions import ClientError

from stream_processor.records import CALL_ID_RE, is_valid_call_id

log = logging.getLogger(__name__)

MIN_PART_BYTES = 5 * 1024 * 1024  # S3: every part but the last
AUDIO_NAME = "audio-full.wav"
METADATA_NAME = "metadata.json"
CONSENT_NAME = "consent.json"


class UnsafeCallId(ValueError):
    """A call id that must never become part of an S3 key."""


class ArchiveConfigError(RuntimeError):
    """The buckets are not set up as the legal archive requires."""


@dataclass(frozen=True)
class CallKeys:
    prefix: str

    @property
    def audio(self) -> str:
        return self.prefix + AUDIO_NAME

    @property
    def metadata(self) -> str:
        return self.prefix + METADATA_NAME

    @property
    def consent(self) -> str:
        return self.prefix + CONSENT_NAME


def call_keys(call_id: str, started_at: datetime) -> CallKeys:
    """Keys of one call's objects; refuses any call id outside ``^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$``."""
    if not is_valid_call_id(call_id):
        raise UnsafeCallId(f"call id does not match {CALL_ID_RE.pattern}; no S3 key is built from it")
    day = started_at.astimezone(timezone.utc)
    return CallKeys(f"calls/{day:%Y/%m/%d}/{call_id}/")


@dataclass
class ArchiveResult:
    keys: CallKeys
    metadata: dict[str, Any]  # as stored in the legal bucket (the first writer's, if it existed)
    audio_written: bool  # this run created audio-full.wav
    already_archived: bool  # metadata.json already existed: nothing was written to the legal bucket


def _is_status(exc: ClientError, *codes: str) -> bool:
    err = exc.response.get("Error", {})
    status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return err.get("Code") in codes or status in codes


class Archive:
    """Writes one call's objects. Thread-safe (boto3 clients are); call from a worker thread."""

    def __init__(
        self,
        s3: Any,
        *,
        legal_bucket: str,
        active_bucket: str,
        part_size: int = 8 * 1024 * 1024,
        retention_days: int = 365,
    ) -> None:
        if part_size < MIN_PART_BYTES:
            raise ValueError(f"part_size must be >= {MIN_PART_BYTES} bytes (S3 minimum)")
        self.s3 = s3
        self.legal = legal_bucket
        self.active = active_bucket
        self.part_size = part_size
        self.retention_days = retention_days

    # -- start-up check --------------------------------------------------------------------------

    def check_buckets(self) -> dict[str, Any]:
        """Verify both buckets exist and the legal one is versioned with a COMPLIANCE default
        retention; returns what was found (logged by the worker at start)."""
        for bucket in (self.legal, self.active):
            try:
                self.s3.head_bucket(Bucket=bucket)
            except ClientError as exc:
                raise ArchiveConfigError(f"bucket {bucket!r} is not reachable: {exc}") from exc
        versioning = self.s3.get_bucket_versioning(Bucket=self.legal).get("Status")
        if versioning != "Enabled":
            raise ArchiveConfigError(f"legal bucket {self.legal!r} must have versioning enabled")
        try:
            lock = self.s3.get_object_lock_configuration(Bucket=self.legal)["ObjectLockConfiguration"]
        except ClientError as exc:
            raise ArchiveConfigError(f"legal bucket {self.legal!r} has no Object Lock: {exc}") from exc
        default = lock.get("Rule", {}).get("DefaultRetention", {})
        if lock.get("ObjectLockEnabled") != "Enabled" or default.get("Mode") != "COMPLIANCE":
            raise ArchiveConfigError(
                f"legal bucket {self.legal!r} must have Object Lock with a COMPLIANCE default retention"
            )
        days = default.get("Days") or 365 * int(default.get("Years", 0))
        return {"legal_bucket": self.legal, "retention_mode": "COMPLIANCE", "retention_days": days}

    # -- the write -------------------------------------------------------------------------------

    def archive_call(
        self,
        call_id: str,
        started_at: datetime,
        *,
        audio: Iterable[bytes] | None,
        metadata: dict[str, Any],
        consent: dict[str, Any],
    ) -> ArchiveResult:
        """Write the call (idempotent). ``audio`` is the WAV in pieces, or None (not recorded)."""
        keys = call_keys(call_id, started_at)
        stored = self._get_json(self.legal, keys.metadata)
        if stored is not None:
            self._copy_to_active(keys, with_audio=self._exists(self.legal, keys.audio))
            return ArchiveResult(keys, stored, audio_written=False, already_archived=True)

        metadata = json.loads(json.dumps(metadata))  # private copy
        recording = metadata.setdefault("recording", {})
        audio_written = False
        if audio is not None:
            info = None
            head = self._head(self.legal, keys.audio)
            if head is None:
                info = self._upload_multipart(self.legal, keys.audio, audio, "audio/wav")
                audio_written = info is not None
                if info is None:  # a concurrent writer completed it first (412)
                    head = self._head(self.legal, keys.audio)
                    if head is None:
                        raise RuntimeError(f"{keys.audio}: upload refused as existing, but no object found")
            if info is None:  # written by an earlier (crashed) attempt or a concurrent writer
                info = self._describe_existing(keys.audio, head)
                recording["reused_existing_object"] = True
            recording.update(
                key=keys.audio,
                bytes=info["bytes"],
                sha256=info["sha256"],
                version_id=info.get("version_id"),
                server_side_encryption=info.get("sse"),
                retention=self._ensure_retention(keys.audio, info.get("version_id"), started_at),
            )
        self._put_once(self.legal, keys.consent, consent, started_at)
        self._put_once(self.legal, keys.metadata, metadata, started_at)
        stored = self._get_json(self.legal, keys.metadata) or metadata
        self._copy_to_active(keys, with_audio=audio is not None)
        return ArchiveResult(keys, stored, audio_written=audio_written, already_archived=False)

    # -- helpers ---------------------------------------------------------------------------------

    def _head(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            return self.s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_status(exc, "404", "NoSuchKey", "NotFound"):
                return None
            raise

    def _exists(self, bucket: str, key: str) -> bool:
        return self._head(bucket, key) is not None

    def _get_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _is_status(exc, "404", "NoSuchKey", "NotFound"):
                return None
            raise
        return json.loads(body)

    def _upload_multipart(
        self, bucket: str, key: str, pieces: Iterable[bytes], content_type: str
    ) -> dict[str, Any] | None:
        """Stream ``pieces`` as a multipart upload (parts of part_size, the last may be smaller).

        Returns size/sha256/version, or None if the object appeared meanwhile (If-None-Match).
        """
        upload = self.s3.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType=content_type, ChecksumAlgorithm="CRC32"
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        digest = hashlib.sha256()
        size = 0
        buf = bytearray()

        def send(data: bytes) -> None:
            number = len(parts) + 1
            resp = self.s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data,
                ChecksumAlgorithm="CRC32",
            )
            parts.append({"PartNumber": number, "ETag": resp["ETag"], "ChecksumCRC32": resp["ChecksumCRC32"]})

        try:
            for piece in pieces:
                digest.update(piece)
                size += len(piece)
                buf += piece
                while len(buf) >= self.part_size:
                    send(bytes(buf[: self.part_size]))
                    del buf[: self.part_size]
            if buf or not parts:
                send(bytes(buf))
            buf = bytearray()
            try:
                done = self.s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": parts}, IfNoneMatch="*",
                )
            except ClientError as exc:
                if _is_status(exc, "412", "PreconditionFailed"):
                    self._abort(bucket, key, upload_id)
                    return None
                raise
        except BaseException:
            self._abort(bucket, key, upload_id)
            raise
        return {
            "bytes": size,
            "sha256": digest.hexdigest(),
            "version_id": done.get("VersionId"),
            "sse": done.get("ServerSideEncryption"),
            "parts": len(parts),
        }

    def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self.s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except ClientError:
            log.warning("could not abort multipart upload", extra={"stage": "recorder", "key": key})

    def _describe_existing(self, key: str, head: dict[str, Any]) -> dict[str, Any]:
        """Size and sha256 of an audio object written by an earlier attempt (read back)."""
        kw = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
        body = self.s3.get_object(Bucket=self.legal, Key=key, **kw)["Body"]
        digest = hashlib.sha256()
        size = 0
        for piece in body.iter_chunks(1024 * 1024):
            digest.update(piece)
            size += len(piece)
        return {
            "bytes": size,
            "sha256": digest.hexdigest(),
            "version_id": head.get("VersionId"),
            "sse": head.get("ServerSideEncryption"),
        }

    def _put_once(self, bucket: str, key: str, doc: dict[str, Any], started_at: datetime) -> None:
        if self._exists(bucket, key):
            return
        body = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False).encode()
        try:
            resp = self.s3.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*"
            )
        except ClientError as exc:
            if _is_status(exc, "412", "PreconditionFailed"):
                return
            raise
        if bucket == self.legal:
            self._ensure_retention(key, resp.get("VersionId"), started_at)

    def _ensure_retention(self, key: str, version_id: str | None, started_at: datetime) -> dict[str, Any]:
        """The object's Object Lock retention; if the bucket default did not apply one (it
        should), set COMPLIANCE for retention_days from the call start and say so in the log."""
        kw = {"VersionId": version_id} if version_id else {}
        try:
            ret = self.s3.get_object_retention(Bucket=self.legal, Key=key, **kw)["Retention"]
        except ClientError as exc:
            if not _is_status(exc, "NoSuchObjectLockConfiguration", "404"):
                raise
            until = started_at.astimezone(timezone.utc) + timedelta(days=self.retention_days)
            log.error(
                "legal object had no retention; applying COMPLIANCE explicitly",
                extra={"stage": "recorder", "key": key, "retention_days": self.retention_days},
            )
            self.s3.put_object_retention(
                Bucket=self.legal, Key=key, Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until}, **kw
            )
            ret = {"Mode": "COMPLIANCE", "RetainUntilDate": until}
        return {"mode": ret.get("Mode"), "retain_until": _iso(ret.get("RetainUntilDate"))}

    def _copy_to_active(self, keys: CallKeys, *, with_audio: bool) -> None:
        names = [keys.consent, keys.metadata] + ([keys.audio] if with_audio else [])
        for key in names:
            if self._exists(self.active, key):
                continue
            # Managed copy: multipart server-side copy for large objects.
            self.s3.copy({"Bucket": self.legal, "Key": key}, self.active, key)


def s3_client(settings: Any, *, max_pool: int = 10) -> Any:
    """A boto3 S3 client for the configured endpoint (path-style: MinIO and AWS both accept it)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint or None,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key.get_secret_value() or None,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value() or None,
        config=Config(
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"},
            max_pool_connections=max_pool,
            connect_timeout=10,
            read_timeout=60,
        ),
    )


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return str(value)
