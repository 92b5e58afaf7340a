"""On the host: the listener daemon. Never imports the deployer or the MCP stack.

Modules:
    daemon           ``fleet-deploy listener``: settings, connection, exit status
    listener         subscriptions, one job at a time, discovery, job queries, upgrades
    preflight        before any job: may this key hear its deploy subjects, send its statuses?
    replays          signed requests remembered on disk until they expire, across restarts
    status_reporter  one job's statuses: bound once, redacted and size-limited in one place
    jobs/            one job = one directory on disk (see ``fleet_core.host.jobs``)
"""
