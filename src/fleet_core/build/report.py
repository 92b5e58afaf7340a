"""A build's results as text for people (pure): a line per host as it changes, a summary."""

from __future__ import annotations

from fleet_core.build.protocol import BuildResult, HostBuild
from fleet_core.deploy.report import TAIL_LINES

__all__ = ["build_line", "build_summary"]


def build_line(host: HostBuild) -> str:
    """One line for a host whose part of a build just changed."""
    detail = host.store_path or host.message
    if host.state.value == "building" and host.phase:
        detail = f"[{host.phase}] {detail}"
    if host.copied_to:
        detail = f"{detail} (copied to {host.copied_to})"
    if host.error:
        detail = f"{host.error}: {host.message}"
    return f"  {host.host:<20} {host.state.value:<10} {detail}".rstrip()


def build_summary(result: BuildResult) -> str:
    """The final report of a build: a row per host, the output of every failure, a verdict."""
    commit = f" = {result.commit}" if result.commit else ""
    by = f" by {result.builder}" if result.builder else ""
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
            lines.append(f"  {host.host:<20} {host.state.value:<10} {took:>8}  {note}".rstrip())
        for host in result.hosts:
            if host.log_tail:
                lines += ["", f"--- last output of {host.host} ---"]
                lines += [f"  {line}" for line in host.log_tail[-TAIL_LINES:]]
        lines.append("")
    if result.message:
        lines.append(f"{result.status}: {result.message}")
    lines.append("OK" if result.ok else "NOT OK")
    return "\n".join(lines)
