"""One job = one directory on disk; the rebuild runs outside the listener and outlives it.

Modules:
    manager         run, follow, resume and report jobs: what the listener calls
    store           the job record (``job.json``): one per job, written atomically
    jobdir          the job directory's files, their names and atomic writes (stdlib only)
    launch          start the job runner: a transient systemd unit or a session of its own
    job_runner      the job runner program (stdlib only): argv, process group, deadline, log
    activation      after a switch or test: checks, confirmation, rollback (stdlib only)
    closure         a closure deploy's plan and steps: fetch, check, activate (stdlib only)
    guard           which jobs are guarded, and with what: the listener's side of activation
    follow          follow a job from its directory: output lines, the runner's end
    resume          what a starting listener does with an unfinished job (pure)
    rebuild         the rebuild's argv, never a shell (pure)
    rebuild_output  phases and failure summaries from nixos-rebuild's output (pure)
    outcome         which final status a rebuild result becomes (pure)

This package's ``__init__`` imports nothing: the job runner is started by path and must not
pay for the listener's imports.
"""
