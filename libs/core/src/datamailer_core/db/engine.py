"""Engine and session factories. Nothing is created at import time: each entry point
builds its engine from its settings and disposes of it on shutdown."""

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from datamailer_core.settings import DatabaseSettings


def create_engine(settings: DatabaseSettings, *, null_pool: bool = False) -> AsyncEngine:
    if null_pool:
        return create_async_engine(settings.url, poolclass=NullPool)
    return create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_pre_ping=True,
        pool_timeout=settings.pool_timeout,
        connect_args={"timeout": settings.connect_timeout},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
