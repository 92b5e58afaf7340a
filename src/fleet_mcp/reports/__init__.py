"""What the MCP tools tell a model: results (pydantic models, the output schemas), their
texts, and the progress notes sent while a deployment or a build runs — all pure.

A tool result is read by a model, so besides the data it carries ``summary`` — one or two
sentences saying what happened and, when something went wrong, what to look at — and
``next_step``: what to do now (keep waiting while it runs, read the failures when it failed).
A model reads a result's *text*, and its context is small: the text is the whole result
while it fits a budget, and a digest beyond it; the structured content always has every
host.

Neither the summary nor the next step, nor a progress note, ever holds what a host or the
builder sent: that is host output, which whoever wrote a branch can shape into sentences
aimed at the model. It stays in fields described as untrusted, and a result's text fences
it under a label that says so (``untrusted``).

Modules, one per concern:
    wording.py          the numbers and phrases every report and note shares
    untrusted.py        host output: which fields hold it, and the text that fences it
    fitting.py          keeping a result's text within its budget: the digest's tools
    deployment.py       one deployment: deploy, deploy_admin and deployment_status
    deployment_list.py  list_deployments: a brief per deployment
    history.py          deployment_history: recorded deployments, their hosts' outcomes
    hosts.py            list_hosts: the listeners that answered discovery
    fleet_status.py     fleet_status: each host's revision, reboot and last deploy
    cancel.py           cancel_deployment: each host's answer to a cancel
    logs.py             deployment_logs: a window of a host's job log, and its cursor
    build.py            one build: build and build_status (with --enable-builds)
    progress.py         progress notes of deployments and builds, one line each
"""

from __future__ import annotations

__all__: list[str] = []
