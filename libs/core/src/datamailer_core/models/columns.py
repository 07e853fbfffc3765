"""Column shapes shared by the models: identity keys, JSONB with defaults, lease columns,
named CHECK constraints over text status columns (text + CHECK evolves with a plain
ALTER, unlike a PostgreSQL enum)."""

from collections.abc import Iterable
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import BigInteger, CheckConstraint, Identity, Integer, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, MappedColumn, mapped_column


def bigint_pk() -> MappedColumn[int]:
    return mapped_column(BigInteger, Identity(), primary_key=True)


def jsonb_object(name: str | None = None) -> MappedColumn[Any]:
    """A JSONB object, default `{}`. Pass `name` for a column called `metadata`, which
    declarative reserves as an attribute (map it as `metadata_`)."""
    if name is None:
        return mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    return mapped_column(name, JSONB, server_default=text("'{}'::jsonb"))


def jsonb_array() -> MappedColumn[Any]:
    return mapped_column(JSONB, server_default=text("'[]'::jsonb"))


def counter(*, big: bool = False) -> MappedColumn[int]:
    return mapped_column(BigInteger if big else Integer, server_default=text("0"))


def one_of(column: str, values: Iterable[str]) -> CheckConstraint:
    """`column IN (...)`, named `ck_<table>_<column>` by the naming convention."""
    allowed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


class EagerDefaults:
    """Fetch server-generated values (identity, defaults, `updated_at` on UPDATE) with
    RETURNING, so an async caller never triggers a lazy refresh after a flush."""

    __mapper_args__: ClassVar[dict[str, Any]] = {"eager_defaults": True}


class LeaseMixin:
    """Claim-before-send: a worker moves a row to `sending` with `lease_owner` and
    `lease_expires_at` in one short transaction; an expired lease while `sending` is the
    "outcome unknown" case (queues.md)."""

    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None]
    attempt_count: Mapped[int] = counter()
