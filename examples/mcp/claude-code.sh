#!/bin/sh
# Register fleet-mcp with Claude Code as the MCP server "fleet-deploy" (docs/mcp.md#claude-code).
#
#   examples/mcp/claude-code.sh          the test tier, in every project (--scope user)
#   examples/mcp/claude-code.sh --admin  with deploy_admin, for the project in the current
#                                        directory only (--scope local, which takes precedence)
#
# The values come from these variables, or the defaults below:
#   NATS_URL         the NATS server (comma-separate the servers of a cluster)
#   NKEY_FILE        the assistant's test-tier seed (fleet-deploy keygen assistant)
#   ADMIN_NKEY_FILE  with --admin: the admin seed (fleet-deploy keygen assistant-admin)
#   FLEET_MCP        fleet-mcp's full path (default: the one on PATH)
#
# The settings go in as fleet-mcp's flags, after "--": `claude mcp add`'s own --env takes
# several values and would swallow the server's name. Undo with
# `claude mcp remove fleet-deploy --scope local` (or --scope user).
#
# For the build tools (build, build_status: the builder builds closures, no host changes),
# add --enable-builds to the fleet-mcp flags below (docs/mcp.md#builds).
set -eu

NATS_URL=${NATS_URL:-nats://nats.example.internal:4222}
NKEY_FILE=${NKEY_FILE:-$HOME/.config/fleet-deploy/assistant.seed}
ADMIN_NKEY_FILE=${ADMIN_NKEY_FILE:-$HOME/.config/fleet-deploy/assistant-admin.seed}
FLEET_MCP=${FLEET_MCP:-$(command -v fleet-mcp || true)}

fail() {
    echo "claude-code.sh: $*" >&2
    exit 1
}

[ -n "$FLEET_MCP" ] || fail "fleet-mcp is not on PATH: set FLEET_MCP to its full path"
[ -r "$NKEY_FILE" ] || fail "no seed at $NKEY_FILE: set NKEY_FILE (fleet-deploy keygen assistant)"

case "${1:-}" in
"")
    claude mcp add --transport stdio --scope user fleet-deploy -- \
        "$FLEET_MCP" --nats-url "$NATS_URL" --nkey-file "$NKEY_FILE"
    ;;
--admin)
    [ -r "$ADMIN_NKEY_FILE" ] || fail "no admin seed at $ADMIN_NKEY_FILE: set ADMIN_NKEY_FILE"
    claude mcp add --transport stdio --scope local fleet-deploy -- \
        "$FLEET_MCP" --nats-url "$NATS_URL" --nkey-file "$NKEY_FILE" \
        --enable-admin --admin-nkey-file "$ADMIN_NKEY_FILE"
    echo "deploy_admin is enabled in $(pwd). Make Claude Code ask before every call of it:" \
        "add examples/mcp/claude-code-settings.json's rule to .claude/settings.json." >&2
    ;;
*)
    fail "usage: claude-code.sh [--admin]"
    ;;
esac
