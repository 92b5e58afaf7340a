"""The deployer: discover, publish, gather, decide; the report; the CLI's deploy commands.

Modules:
    deployer    publish a request, gather statuses, query jobs, discover hosts
    gathering   what each event does to a deployment's tracker; a rollout under way
    inbox       a deployment's replies and the server's refusals, as one event stream
    answers     what a discovery or job query gathers, and which answers are believed
    tracker     one deployment host by host, when a host is lost, when it is over (pure)
    results     what a deployment reports: its result, host by host, its outages (pure)
    rollout     canary, batches and the failure budget: the order, the plan, when to stop (pure)
    closures    closure deploys: which host is sent which built system, who is sent none (pure)
    closure_deploy  a closure deploy's systems: built for the target now, or a recorded build
    cancel      send a deployment's cancel to its hosts and gather their answers
    cancellation  what each host's answer to a cancel means (pure)
    logs        ``fleet-deploy logs``: a job's whole log from its host, chunk after chunk
    report      results as text for people (pure)
    commands    ``fleet-deploy deploy``, ``check``, ``cancel`` and ``hosts``: output, exit code
    fleet_status  ``status``: each host's row, behind or not, healthy or not, the verdict (pure)
    status_command  ``fleet-deploy status``: discover, judge, print; exit 0 or 1
    history     the history streams' configuration; deployments from recorded messages (pure)
    history_reader  create the history streams, read them (direct gets); the job-record fallback
    history_commands  ``fleet-deploy history`` and ``show``: tables, one deployment, JSON
"""
