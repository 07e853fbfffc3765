"""aioboto3 clients configured from settings. `AWS_ENDPOINT_URL` points every client at a
local endpoint (moto's server, LocalStack); unset means real AWS."""

from contextlib import AbstractAsyncContextManager
from typing import Any

import aioboto3
from botocore.config import Config

from datamailer_core.settings import AwsSettings


def aws_session(settings: AwsSettings) -> aioboto3.Session:
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    return aioboto3.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=secret,
        region_name=settings.region,
    )


def aws_client(
    session: aioboto3.Session, settings: AwsSettings, service: str, **config: Any
) -> AbstractAsyncContextManager[Any]:
    """An async context manager yielding a client; keep one open per process, not per call."""
    return session.client(  # type: ignore[no-any-return]
        service,
        endpoint_url=settings.endpoint_url,
        config=Config(retries={"max_attempts": 2, "mode": "standard"}, **config),
    )
