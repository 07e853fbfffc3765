"""The API's render pool (`datamailer_core.templating.pool`): created with the app,
closed when it stops; handlers render through it so a hostile template never holds the
event loop (or this process's memory) while other requests, `/health` included, wait."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from datamailer_core.templating.pool import RenderPool


def with_render_pool(app: FastAPI) -> None:
    """Wrap the app's lifespan so `app.state.render_pool` lives exactly as long."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with inner(app), RenderPool(preload=["datamailer_core.campaigns.message"]) as pool:
            app.state.render_pool = pool
            yield

    app.router.lifespan_context = lifespan


def get_render_pool(request: Request) -> RenderPool:
    pool: RenderPool = request.app.state.render_pool
    return pool


RenderPoolDep = Annotated[RenderPool, Depends(get_render_pool)]
