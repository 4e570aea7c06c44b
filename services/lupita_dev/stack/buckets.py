"""Create the two S3 buckets the platform writes to, with their compliance settings.

Legal archive: Object Lock (COMPLIANCE, default 365 days; ``LUPITA_LEGAL_RETENTION_DAYS``),
versioning (implied by Object Lock), default encryption SSE-KMS, and a lifecycle rule that
moves objects to an archive tier after 90 days. Active bucket: versioned copy for processing,
no lock. The same function is what an operator runs against a real AWS account.
"""

from __future__ import annotations

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ARCHIVE_AFTER_DAYS = 90


def s3_client(env: dict[str, str]):
    return boto3.client(
        "s3",
        endpoint_url=env.get("LUPITA_S3_ENDPOINT") or None,
        region_name=env.get("LUPITA_S3_REGION", "us-east-1"),
        aws_access_key_id=env.get("LUPITA_S3_ACCESS_KEY") or None,
        aws_secret_access_key=env.get("LUPITA_S3_SECRET_KEY") or None,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
    )


def _exists(s3, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise


def setup_buckets(env: dict[str, str]) -> list[str]:
    """Idempotently create and configure both buckets; returns human-readable lines."""
    s3 = s3_client(env)
    legal = env.get("LUPITA_S3_LEGAL_BUCKET", "saludcompartida-legal-archive")
    active = env.get("LUPITA_S3_ACTIVE_BUCKET", "saludcompartida-companion-active")
    days = int(env.get("LUPITA_LEGAL_RETENTION_DAYS", "365"))
    kms_key = env.get("LUPITA_S3_KMS_KEY_ID", "")
    out = []

    if not _exists(s3, legal):
        s3.create_bucket(Bucket=legal, ObjectLockEnabledForBucket=True)
        out.append(f"created bucket {legal} (Object Lock enabled)")
    s3.put_bucket_versioning(Bucket=legal, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object_lock_configuration(
        Bucket=legal,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": days}},
        },
    )
    _default_encryption(s3, legal, kms_key)
    out.append(f"{legal}: Object Lock COMPLIANCE {days} days, versioning, {_enc_name(kms_key)}")
    out.append(f"{legal}: lifecycle {_lifecycle(s3, legal)}")

    if not _exists(s3, active):
        s3.create_bucket(Bucket=active)
        out.append(f"created bucket {active}")
    s3.put_bucket_versioning(Bucket=active, VersioningConfiguration={"Status": "Enabled"})
    _default_encryption(s3, active, kms_key)
    return out


def _enc_name(kms_key: str) -> str:
    return f"SSE-KMS ({kms_key})" if kms_key else "SSE-S3 (AES256)"


def _default_encryption(s3, bucket: str, kms_key: str) -> None:
    rule = (
        {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key} if kms_key else {"SSEAlgorithm": "AES256"}
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": rule}]},
    )


def _lifecycle(s3, bucket: str) -> str:
    """Transition to the archive tier after 90 days; where the server has no such tier (a
    single local MinIO has none configured) keep the housekeeping part of the rule and say so."""
    full = {
        "ID": "archive-after-90-days",
        "Status": "Enabled",
        "Filter": {"Prefix": "calls/"},
        "Transitions": [{"Days": ARCHIVE_AFTER_DAYS, "StorageClass": "GLACIER"}],
    }
    try:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [full]})
        return f"transition to GLACIER after {ARCHIVE_AFTER_DAYS} days"
    except ClientError as exc:
        reason = exc.response["Error"].get("Message") or exc.response["Error"]["Code"]
    # MinIO knows no GLACIER class without a remote tier, nor AbortIncompleteMultipartUpload;
    # the closest rule it accepts that is safe under Object Lock removes only expired delete markers.
    reduced = {
        "ID": "housekeeping",
        "Status": "Enabled",
        "Filter": {"Prefix": "calls/"},
        "Expiration": {"ExpiredObjectDeleteMarker": True},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [reduced]})
    return (
        f"archive transition refused by this S3 server ({reason}); applied only "
        "the expired-delete-marker clean-up rule"
    )
