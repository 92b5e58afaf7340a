"""What the server's lifespan hands to every tool call: the NATS links, the registries of
deployments and builds, and the settings the tools need while they run.

The lifespan (``fleet_mcp.server``) owns all of it; a tool only reads it, so that nothing a
call does outlives the server but through a registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from fleet_core.config.options import DEFAULT_BUILD_TIMEOUT
from fleet_core.metrics import DeployerMetrics
from fleet_mcp.builds import BuildRegistry
from fleet_mcp.deployments import DeploymentRegistry
from fleet_mcp.link import NatsLink

__all__ = ["FleetState"]


@dataclass
class FleetState:
    """What the lifespan yields to every tool call."""

    test: NatsLink
    admin: NatsLink | None
    registry: DeploymentRegistry
    heartbeat: float
    deploy_timeout: float
    metrics: DeployerMetrics | None = None  # over HTTP only: counts calls and deployments
    builds: BuildRegistry | None = None  # with --enable-builds only
    build_timeout: float = DEFAULT_BUILD_TIMEOUT  # how long the server follows one build
