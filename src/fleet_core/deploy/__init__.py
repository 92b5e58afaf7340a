"""The deployer: discover, publish, gather, decide; the report; the CLI's deploy commands.

Modules:
    deployer    publish a request, gather statuses, query jobs, discover hosts
    tracker     one deployment host by host, when a host is lost, when it is over (pure)
    rollout     canary, batches and the failure budget: the order, the plan, when to stop (pure)
    report      results as text for people (pure)
    commands    ``fleet-deploy deploy`` and ``hosts``: output, and the exit code
"""
