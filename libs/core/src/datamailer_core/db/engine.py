"""Engine and session factories. Nothing is created at import time: each entry point
builds its engine from its settings and disposes of it on shutdown."""

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from datamailer_core.settings import DatabaseSettings


def create_engine(
    settings: DatabaseSettings, *, null_pool: bool = False, min_pool_size: int = 0
) -> AsyncEngine:
    """`min_pool_size`: a process that runs N units of work at once keeps at least that
    many connections (else every extra one is opened and closed again per use)."""
    if null_pool:
        return create_async_engine(settings.url, poolclass=NullPool)
    return create_async_engine(
        settings.url,
        pool_size=max(settings.pool_size, min_pool_size),
        max_overflow=settings.max_overflow,
        pool_pre_ping=True,
        pool_timeout=settings.pool_timeout,
        connect_args={"timeout": settings.connect_timeout},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
