"""A pyarrow filesystem for a local path or an `s3://` URI, from delta-rs's storage options: how the
code outside delta-rs reaches the lake's and the landing zone's files. See docs/scaling_out.md."""

import os
from collections.abc import Mapping
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def filesystem(uri: str, storage_options: Mapping[str, str] | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `uri` and the path of `uri` inside it."""
    if is_local(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    if not uri.startswith(("s3://", "s3a://")):
        return pafs.FileSystem.from_uri(uri)
    options = {k.lower().removeprefix("aws_"): v for k, v in (storage_options or {}).items()}

    def setting(*names: str) -> str | None:
        for name in names:
            if options.get(name):
                return options[name]
            if os.environ.get(f"AWS_{name.upper()}"):
                return os.environ[f"AWS_{name.upper()}"]
        return None

    endpoint = setting("endpoint", "endpoint_url")
    parsed = urlparse(endpoint) if endpoint else None
    s3 = pafs.S3FileSystem(
        access_key=setting("access_key_id"),
        secret_key=setting("secret_access_key"),
        session_token=setting("token", "session_token"),
        region=setting("region", "default_region") or "us-east-1",
        endpoint_override=parsed.netloc if parsed else None,
        scheme=parsed.scheme if parsed else "https",
    )
    return s3, uri.split("://", 1)[1]
