"""Route helpers shared by the API's routers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute


def also_head(router: APIRouter) -> None:
    """Answer HEAD on each GET route of ``router`` as GET does, headers only (the server drops the body):
    load balancers, uptime checkers and monitors probe with HEAD, and a 405's ``Allow`` names HEAD wherever GET
    is (QA: ``HEAD /admin/status`` answered 405 with ``Allow: GET, HEAD``). Kept out of the OpenAPI document,
    where they would only repeat the GET operations. Call it once the router's GET routes are defined."""
    for route in list(router.routes):
        if isinstance(route, APIRoute) and route.methods == {"GET"}:
            router.add_api_route(
                route.path.removeprefix(router.prefix),
                route.endpoint,
                methods=["HEAD"],
                include_in_schema=False,
                response_class=route.response_class,
            )
