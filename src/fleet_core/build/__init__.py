"""Builds: a builder evaluates and builds each host's system once, from one pinned commit.

Modules:
    protocol    build subjects, requests, statuses, the nix argv, one build's result (pure)
    tracker     one build host by host, and when its builder is lost (pure)
    client      ask a builder for a build and follow it to its end
    builder     ``fleet-deploy builder``: one build at a time, nix run and reported
    report      a build as text for people (pure)
    commands    ``fleet-deploy build``
"""
