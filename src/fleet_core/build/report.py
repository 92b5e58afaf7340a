"""A build's results as text for people (pure): a line per host as it changes, a summary.

What the builder sent — host names (the flake's, so a branch names them), phases, store
paths, caches, error codes, messages, nix's output — goes through ``printable`` on its way
into a line, as a deployment's host text does (``fleet_core.deploy.report``): nix's output
is written by whoever pushed the branch, and must not drive the terminal.
"""

from __future__ import annotations

from fleet_core.build.protocol import BuildResult, HostBuild
from fleet_core.deploy.report import TAIL_LINES
from fleet_core.protocol.text import printable

__all__ = ["build_line", "build_summary"]


def build_line(host: HostBuild) -> str:
    """One line for a host whose part of a build just changed."""
    detail = printable(host.store_path or host.message)
    if host.state.value == "building" and host.phase:
        detail = f"[{printable(host.phase)}] {detail}"
    if host.copied_to:
        detail = f"{detail} (copied to {printable(host.copied_to)})"
    if host.error:
        detail = f"{printable(host.error)}: {printable(host.message)}"
    return f"  {printable(host.host):<20} {host.state.value:<10} {detail}".rstrip()


def build_summary(result: BuildResult) -> str:
    """The final report of a build: a row per host, the output of every failure, a verdict.

    The build's own message may hold several lines (a refusal brings the builder's last
    output lines): each is shown indented under the status, so none stands at the start of
    a line as a verdict would."""
    commit = f" = {printable(result.commit)}" if result.commit else ""
    by = f" by {printable(result.builder)}" if result.builder else ""
    lines = [
        f"build {result.build_id}: {result.target} at {result.revision}{commit}{by} "
        f"({result.elapsed_s:.1f} s)",
        "",
    ]
    if result.hosts:
        lines.append(f"  {'HOST':<20} {'STATE':<10} {'TIME':>8}  RESULT")
        for host in result.hosts:
            took = f"{host.duration_s:.1f}s" if host.duration_s is not None else "-"
            note = f"{host.error}: {host.message}" if host.error else (host.store_path or "")
            name = printable(host.host)
            lines.append(
                f"  {name:<20} {host.state.value:<10} {took:>8}  {printable(note)}".rstrip()
            )
        for host in result.hosts:
            if host.log_tail:
                lines += ["", f"--- last output of {printable(host.host)} ---"]
                lines += [f"  {printable(line)}" for line in host.log_tail[-TAIL_LINES:]]
        lines.append("")
    if any(host.store_path for host in result.hosts):
        # The next step, as the MCP build tool's result says it (docs/closures.md).
        pinned = printable(result.commit or result.revision)
        lines += [
            f"deploy these systems: fleet-deploy deploy TARGET --from-build {result.build_id}"
            "   (the admin key: it reads the builds stream)",
            f"  or build and deploy in one step: fleet-deploy deploy TARGET --build "
            f"{printable(result.repo)} --branch {pinned}",
            "",
        ]
    if result.message:
        first, *rest = result.message.split("\n")
        lines.append(f"{printable(result.status)}: {printable(first)}")
        lines += [f"  {printable(line)}" for line in rest]
    lines.append("OK" if result.ok else "NOT OK")
    return "\n".join(lines)
