"""The wire protocol, pure: no I/O, tested without a server.

Modules:
    subjects    tiers, subjects, targets, aliases
    actions     what a request may ask: actions, revisions, host kinds, flake URLs
    messages    wire models and their size limits
    facts       host facts in discovery: what a host runs, its last job (and parsing them)
    signing     signed requests: canonical text, ed25519, TTL and replay checks
    trust       bound replies: which host answered, and what a deployer believes
    text        text from the wire as it may be shown: control characters made visible
    refusals    what the server's permission refusals say about a key, for the person using it
    logs        whole logs on demand: a log request's window, the chunk, where a chunk is cut
    closures    closure deploys: the store paths a request may carry, which a host takes
"""
