"""GET /metrics: this node's Prometheus metrics (node/metrics.py renders them).

Authorisation: a token of any role (viewer is enough), sent as Prometheus sends one
(`authorization: credentials_file` -> `Authorization: Bearer TOKEN`), or a session
cookie. A refused scrape is a plain 401/503 text, never the login redirect the pages
get: a scraper cannot follow it. With `metrics_require_token = false` the endpoint is
open to whoever reaches the HTTP port (docs/metrics.md says what that reveals).

Who calls: app.build_app mounts `routes(ctx)` when the node has metrics.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ..metrics import CONTENT_TYPE, NodeMetrics
from . import session


def routes(metrics: NodeMetrics | None, require_token: bool) -> list[BaseRoute]:
    """GET /metrics (always mounted: without metrics it answers 503 saying so)."""

    def scrape(request: Request) -> Response:
        if require_token:
            try:
                session.caller_of(request)
            except session.Unauthenticated as e:
                return PlainTextResponse(
                    f"{e.message} (/metrics needs a token of any role: Prometheus' "
                    "authorization: credentials_file, or metrics_require_token = false on the node)\n",
                    status_code=401, headers={"www-authenticate": "Bearer"})
        if metrics is None:
            return PlainTextResponse("this node serves no metrics\n", status_code=503)
        return Response(metrics.render(), media_type=CONTENT_TYPE, headers={"cache-control": "no-store"})

    return [Route("/metrics", scrape, methods=["GET"])]
