"""On the host: the listener daemon. Never imports the deployer or the MCP stack.

Modules:
    daemon           ``fleet-deploy listener``: settings, connection, exit status
    listener         subscriptions, one job at a time, discovery, job queries, upgrades
    facts            the host's facts for discovery, measured once per change and cached
    preflight        before any job: may this key hear its deploy subjects, send its statuses?
    replays          signed requests remembered on disk until they expire, across restarts
    status_reporter  one job's statuses: bound once, redacted and size-limited in one place
    logs             log requests: one bounded chunk of a job's output.log per request
    jobs/            one job = one directory on disk (see ``fleet_core.host.jobs``)
"""
