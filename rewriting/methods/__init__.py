"""The rewriting methods, by the name a route's ``method`` uses."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rewriting.methods.base import Method, RouteConfig
from rewriting.methods.nemotron_cc import NemotronCC, NemotronRoute
from rewriting.methods.prox import Prox, ProxRoute
from rewriting.methods.rewire import Rewire, RewireRoute
from rewriting.methods.wrap import Wrap, WrapRoute

METHODS: dict[str, type[Method]] = {m.name: m for m in (Wrap, NemotronCC, Prox, Rewire)}

# A route of the YAML, validated by the model of its method (the ``method`` key decides which).
AnyRoute = Annotated[WrapRoute | NemotronRoute | ProxRoute | RewireRoute, Field(discriminator="method")]


def method_for(route: RouteConfig) -> Method:
    return METHODS[route.method](route)


__all__ = ["METHODS", "AnyRoute", "Method", "RouteConfig", "method_for"]
