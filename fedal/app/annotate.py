"""``fedal annotate NODE_DIR``: a small local web page (Starlette, served by uvicorn) on
which a person labels the images the node's client queued (:mod:`fedal.labelling_queue`).

The page shows the oldest waiting image with one button per class, how many images wait
and how many were labelled per round. A click is committed to the queue before the page
answers, so an acknowledged answer survives a crash of the page, the SuperNode or the
ClientApp. Only queued, unprotected images are ever served.

It binds to 127.0.0.1 by default. Any other address needs ``--allow-remote`` and a
token (``--token`` or ``$FEDAL_ANNOTATE_TOKEN``, 16 characters or more); the person then
opens ``http://HOST:PORT/?token=TOKEN`` once and the page keeps the token in a cookie.
Answers are refused when the browser says they come from another site's page.
"""

from __future__ import annotations

import html
import io
import ipaddress
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image, ImageOps
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from fedal.labelling_queue import LabellingQueue, QueueError
from fedal.schema import ConfigError

TOKEN_COOKIE = "fedal-annotate-token"
TOKEN_ENV = "FEDAL_ANNOTATE_TOKEN"
MIN_TOKEN_LENGTH = 16
DISPLAY_SIZE = 384
EMPTY_REFRESH_SECONDS = 2


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str, allow_remote: bool) -> None:
    """Refuse, in one line, to serve beyond this machine without the flag and a token."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise ConfigError(
            f"annotate: --host {host} is reachable from other machines; add --allow-remote "
            f"and a token (--token or ${TOKEN_ENV}) to serve there"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"annotate: --host {host} needs a token of {MIN_TOKEN_LENGTH} characters or more "
            f"(--token or ${TOKEN_ENV})"
        )


class TokenGate(BaseHTTPMiddleware):
    """Every request carries the token (``?token=`` or the cookie it sets); a form post
    from another origin is refused."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        origin = request.headers.get("origin")
        if request.method == "POST" and origin and urlsplit(origin).netloc != request.url.netloc:
            return PlainTextResponse("answers are taken from this page only", status_code=403)
        if not self.token:
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and secrets.compare_digest(given, self.token):
            response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return response
        if secrets.compare_digest(request.cookies.get(TOKEN_COOKIE, ""), self.token):
            return await call_next(request)
        return PlainTextResponse("open the page with ?token=... first", status_code=401)


def _per_round_rows(queue: LabellingQueue) -> str:
    rows = "".join(
        f"<tr><td>{round_number}</td><td>{count}</td></tr>"
        for round_number, count in queue.labelled_per_round().items()
    )
    return rows or '<tr><td colspan="2">none yet</td></tr>'


def render_page(queue: LabellingQueue) -> str:
    """The page: the oldest waiting image and its class buttons, and the counts."""
    classes = queue.classes()
    pending = queue.next_pending()
    if pending is None:
        refresh = f'<meta http-equiv="refresh" content="{EMPTY_REFRESH_SECONDS}">'
        task = '<p id="nothing">Nothing to label right now; this page looks again shortly.</p>'
    else:
        refresh = ""
        buttons = "".join(
            f'<form method="post" action="/answer/{pending.image}/{label}">'
            f'<button type="submit" id="label-{label}">{html.escape(name)}</button></form>'
            for label, name in enumerate(classes)
        )
        task = (
            f'<figure><img id="image" src="/image/{pending.image}" alt="image to label" '
            f'data-image="{pending.image}"><figcaption>asked for in round '
            f"{pending.queued_round}</figcaption></figure>"
            f'<div class="buttons">{buttons}</div>'
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<title>fedal annotate</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 40em; }}
img {{ width: {DISPLAY_SIZE}px; max-width: 100%; image-rendering: pixelated; }}
.buttons form {{ display: inline; }}
button {{ font-size: 1.2em; margin: 0.3em; padding: 0.4em 1em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 0.2em 0.8em; }}
</style></head>
<body><h1>Label the images your device picked</h1>
<p>Waiting: <strong id="waiting">{queue.waiting()}</strong>.
Protected images are never shown here and never leave this device.</p>
{task}
<h2>Labelled per round</h2>
<table id="per-round"><tr><th>round</th><th>labelled</th></tr>{_per_round_rows(queue)}</table>
</body></html>"""


def annotate_app(node_dir: Path, token: str = "") -> Starlette:
    """The page of ``node_dir``'s labelling queue (a token, when given, is required)."""
    queue = LabellingQueue(node_dir)
    root = node_dir.resolve()

    async def page(request: Request) -> Response:
        return HTMLResponse(render_page(queue))

    async def image(request: Request) -> Response:
        relative = queue.queued_path(int(request.path_params["image"]))
        path = (root / relative).resolve() if relative else None
        if path is None or not path.is_relative_to(root) or not path.is_file():
            return PlainTextResponse("not a queued image", status_code=404)
        with Image.open(path) as opened:
            shown = ImageOps.exif_transpose(opened).convert("RGB")
        shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
        encoded = io.BytesIO()
        shown.save(encoded, format="PNG")
        return Response(encoded.getvalue(), media_type="image/png")

    async def answer(request: Request) -> Response:
        """Commit the answer, then show the next image (an image answered before keeps
        its first answer, e.g. after a resent click)."""
        try:
            queue.answer(int(request.path_params["image"]), int(request.path_params["label"]))
        except QueueError as error:
            return PlainTextResponse(str(error), status_code=400)
        return RedirectResponse("/", status_code=303)

    routes = [
        Route("/", page),
        Route("/image/{image:int}", image),
        Route("/answer/{image:int}/{label:int}", answer, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, token=token)])


def serve(node_dir: Path, host: str, port: int, token: str, allow_remote: bool) -> None:
    """Serve the page with uvicorn until interrupted."""
    import uvicorn

    check_binding(host, token, allow_remote)
    try:
        app = annotate_app(node_dir, token)
    except QueueError as error:
        raise ConfigError(f"annotate: {error}") from None
    shown = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    print(f"labelling page for {node_dir}: {shown}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
