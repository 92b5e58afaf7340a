"""fleet-deploy's dashboard: a live page of the fleet in the browser, over the core.

``fleet-deploy dashboard`` serves it (``fleet_dashboard.command``). A front end beside
``fleet_mcp``: ``fleet_core`` never imports it, and neither ``fleet-deploy --help`` nor the
listener loads it. Read-only by default, with an observer key that can deploy nothing;
actions exist only with ``--allow-actions``, behind a login.

Modules:
    command      ``fleet-deploy dashboard``: keys, the login's files, --hash-password, serve
    server       uvicorn driven from anyio until cancelled; says where it listens
    app          the Starlette app: routes, server-sent events, the static files
    board        the board's state: host rows, live deployments, change events (pure)
    watcher      one NATS connection with the read key: replies and discoveries feed the board
    hub          each open event stream's bounded backlog: a slow page gets the state anew
    security     Host and Origin checks, security headers
    auth         password hashes, TOTP, signed session cookies, login rate limits (pure)
    actions      login, logout, session, and the actions (deploy, cancel, check) behind them
"""

from __future__ import annotations

__all__: list[str] = []
