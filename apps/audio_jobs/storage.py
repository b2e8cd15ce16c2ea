"""Where audio lives: server-chosen keys in the configured storage, fetched to local temp files.

Keys are `org/<organisation id>/audio/<job id><ext>` (`<job id>.redacted-<random>.flac` once
PII was silenced in it) and `org/<organisation id>/uploads/<upload
id>`; a client-supplied file name is never part of a key.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

logger = logging.getLogger(__name__)

# Keyed by media.ProbeResult.format_name.
EXTENSIONS = {
    "wav": ".wav",
    "mp3": ".mp3",
    "flac": ".flac",
    "ogg": ".ogg",
    "mp4": ".m4a",
    "matroska": ".webm",
}


def audio_key(organisation_id: Any, job_id: Any, container: str) -> str:
    return f"org/{organisation_id}/audio/{job_id}{EXTENSIONS.get(container, '.bin')}"


def redacted_audio_key(organisation_id: Any, job_id: Any) -> str:
    """A new key for each copy of a job's audio with its PII silenced: a copy left by a worker
    that died is its guard's to delete, never overwritten by (or mistaken for) the next one."""
    return f"org/{organisation_id}/audio/{job_id}.redacted-{uuid.uuid4().hex[:12]}.flac"


def upload_key(organisation_id: Any, upload_id: Any) -> str:
    return f"org/{organisation_id}/uploads/{upload_id}"


def store_file(path: str | Path, key: str) -> str:
    with open(path, "rb") as handle:
        return default_storage.save(key, File(handle))


def delete_quietly(key: str) -> None:
    """Delete a stored file; a failure is logged, never raised (cleanup must not mask errors)."""
    if not key:
        return
    try:
        default_storage.delete(key)
    except Exception:
        logger.warning("Could not delete stored file %s", key, exc_info=True)


@contextlib.contextmanager
def local_copy(key: str) -> Iterator[Path]:
    """Yield a local path for a stored file: the file itself on local disk, else a temp copy."""
    try:
        yield Path(default_storage.path(key))
        return
    except NotImplementedError:
        pass
    directory = tempfile.mkdtemp(prefix="lexiscore-audio-", dir=settings.FILE_UPLOAD_TEMP_DIR)
    try:
        target = Path(directory) / "audio"
        with default_storage.open(key, "rb") as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, length=1024 * 1024)
        yield target
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def supports_presigned_upload() -> bool:
    return hasattr(default_storage, "bucket") and hasattr(default_storage, "connection")


_signing = threading.local()


def _presigning_client() -> Any:
    """The client that signs presigned POSTs: the storage's own, or, with
    AWS_S3_PUBLIC_ENDPOINT_URL, one for the address clients reach the store at (compose's
    MinIO is `http://minio:9000` to the platform, a name no browser resolves). A POST policy's
    signature covers the policy, not the host, so the store accepts what this client signs
    whichever way the request reaches it. One client per thread, as django-storages keeps its
    connections (boto3 clients are not shared across threads)."""
    # django-storages' S3Storage (checked by supports_presigned_upload) has these attributes;
    # django-stubs type default_storage as the base Storage.
    public = settings.AWS_S3_PUBLIC_ENDPOINT_URL
    if not public:
        return default_storage.connection.meta.client  # type: ignore[attr-defined]
    storage: Any = default_storage
    key = (public, storage.endpoint_url, storage.access_key, storage.region_name)
    cached = getattr(_signing, "client", None)
    if cached is None or cached[0] != key:
        client = storage._create_session().client(
            "s3",
            region_name=storage.region_name,
            use_ssl=storage.use_ssl,
            endpoint_url=public,
            config=storage.client_config,
            verify=storage.verify,
        )
        cached = _signing.client = (key, client)
    return cached[1]


def presigned_post(key: str, *, max_size: int, expires_in: int) -> dict[str, Any]:
    """A presigned POST whose policy fixes the exact key and a size range."""
    client = _presigning_client()
    return client.generate_presigned_post(
        Bucket=default_storage.bucket_name,  # type: ignore[attr-defined]
        Key=key,
        Conditions=[["content-length-range", 1, max_size], {"key": key}],
        ExpiresIn=expires_in,
    )


class SourceChanged(Exception):
    """The object was replaced after it was checked (its ETag is not the one checked)."""


def object_etag(key: str) -> str | None:
    """The stored object's ETag on S3 (a HEAD request); None elsewhere or when it is missing."""
    if not supports_presigned_upload():
        return None
    from botocore.exceptions import ClientError

    client = default_storage.connection.meta.client  # type: ignore[attr-defined]
    try:
        return client.head_object(Bucket=default_storage.bucket_name, Key=key)["ETag"]  # type: ignore[attr-defined]
    except ClientError:
        return None


def copy_file(source: str, target: str, *, if_match: str | None = None) -> str:
    """Copy a stored file to another key and return the target's key: on S3 a server-side copy
    (multipart for large objects; no byte passes through this process), elsewhere streamed.

    `if_match`: the source's ETag as it was checked. Every part of the copy is then made from
    that version, or the copy fails with `SourceChanged` (a presigned form sent again during the
    copy would otherwise give an object made of two uploads)."""
    if supports_presigned_upload():
        from botocore.exceptions import ClientError

        # Raw keys, as presigned_post signs them.
        client = default_storage.connection.meta.client  # type: ignore[attr-defined]
        bucket = default_storage.bucket_name  # type: ignore[attr-defined]
        extra = {"CopySourceIfMatch": if_match} if if_match else None
        from s3transfer.exceptions import S3CopyFailedError

        try:
            client.copy({"Bucket": bucket, "Key": source}, bucket, target, ExtraArgs=extra)
        except S3CopyFailedError as exc:
            # How s3transfer reports a part whose source no longer matched the ETag (a
            # multipart copy, above its 8 MiB threshold).
            raise SourceChanged(source) from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "412"):
                raise SourceChanged(source) from exc
            if code in ("404", "NoSuchKey", "NotFound"):  # as FileSystemStorage's open() says
                raise FileNotFoundError(source) from exc
            raise
        return target
    with default_storage.open(source, "rb") as handle:
        return default_storage.save(target, File(handle))


def stored_size(key: str) -> int | None:
    """The stored object's size (a HEAD request on S3), or None when it does not exist."""
    if not default_storage.exists(key):
        return None
    return default_storage.size(key)
