"""`GET /t/o/{token}.gif`: the open pixel. Every token gets the same GIF at once; the
open is published to `email-events` for the worker to apply (no database here)."""

from typing import Final

from fastapi import APIRouter, Request, Response

from datamailer_tracking.events import tracking_event
from datamailer_tracking.responses import NO_STORE, TOKEN, events

# A 1×1 transparent GIF89a: header, logical screen with a 2-colour table, a graphic
# control extension marking colour 0 transparent, one image, trailer.
PIXEL: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

router = APIRouter(tags=["tracking"])


@router.get(
    "/t/o/{token}.gif",
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}, "description": "A 43-byte transparent GIF."}},
)
async def open_pixel(token: str, request: Request) -> Response:
    """The same GIF for every token, known or not; an open is published only for a
    well-formed token."""
    if TOKEN.fullmatch(token):
        events(request).submit(tracking_event("open", token, request))
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)
