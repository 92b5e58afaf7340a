"""The MCP tools, a thin layer over the deployer; ``server.build_server`` registers them.

Tools:
    list_hosts(tier?)                                   read-only discovery, with host facts
    fleet_status(tier?, hostname | role?, revision?)    read-only: behind, reboot, last deploy
    deploy(hostname | all | role, branch, action)       the test tier, and only the test tier
    deploy_admin(tier, hostname | all | role, ...)      any tier, with the admin key
    deployment_status(deployment_id?, wait_seconds)     keeps waiting for a running deployment
    list_deployments(limit)                             read-only: this server's deployments
    deployment_history(tier?, hostname?, limit)         read-only: the recorded history
    cancel_deployment(deployment_id, hostname?)         stop what still builds; refuse the rest
    deployment_logs(deployment_id, hostname, cursor?, lines?, tier?)  read-only: a log window
    build(repo, target, branch, wait_seconds)           --enable-builds: the builder builds
    build_status(build_id?, wait_seconds)               keeps waiting for a running build

Modules, one per family:
    hosts        list_hosts
    status       fleet_status
    deploy       deploy (where it pins the test tier) and deploy_admin
    deployments  deployment_status, list_deployments, the ``fleet://deployments/{id}``
                 resource (``read_deployment``)
    history      deployment_history; deployment_status's answer for an id it did not start
    cancel       cancel_deployment
    logs         deployment_logs
    build        build and build_status
    arguments    checks what a model sent, and words its mistakes
    calls        what every call does around its own work

A tool's docstring is its description (``server`` strips the
indentation): plain sentences for a model, no markup.

The same state is readable as MCP resources, so a client can reattach to a deployment
without the model keeping its id. A tool's text is small whatever the fleet
(``fleet_mcp.reports``); the structured content has everything.

Safety does not rest on the model behaving: ``deploy`` builds its subject with the test tier
fixed, so no argument can name production whatever the key could do, and the NATS
permissions of the test key stop it independently. Arguments are checked before anything is
sent; a mistake is a tool error that says what to send instead: the tools' own checks say it,
and so does a type or a bound the SDK checks against a tool's schema, which
``server.FleetServer.call_tool`` rewords (``arguments.argument_mistakes``), one sentence per
wrong argument, without the SDK's validation text. Tools read the lifespan's
``FleetState``: they start deployments in its registry and follow them, nothing more.

``build`` asks the fleet's builder (``fleet-deploy builder``) for system closures with the
test key: a build changes no host, and the NATS permissions let every deployer key ask for
one. Builds run in a registry of their own and are followed like deployments; the two tools
exist only with ``--enable-builds``.
"""

from __future__ import annotations

__all__: list[str] = []
