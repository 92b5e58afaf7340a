// Drives an MCP server over stdio with the official TypeScript SDK, for tests/test_mcp_interop.py.
//
//   node client.mjs '<scenario JSON>'
//
// The scenario names the server and the calls to make:
//
//   {"server": {"command": "...", "args": [...], "env": {...}},
//    "steps": [{"step": "tools", "list_tools": true},
//              {"step": "deploy", "tool": "deploy", "arguments": {...}, "follow": 5}]}
//
// A step with "follow": N is followed, while its result says state "running", by up to N
// deployment_status calls with the deployment_id and no wait_seconds: what a client with a
// 60 s cap is told to do. Every request uses the SDK's defaults — its 60 s request timeout,
// which progress does not reset — as Claude Desktop and most clients built on it do.
//
// Prints one JSON object per line on stdout: first {"sdk": ...}, then one per request
// ({"step", "call", "method", "tool", "arguments", "started_ms", "elapsed_ms", "progress",
// and "result" or "error"}), then {"done": true}. A request that fails (a timeout, a protocol
// error) is reported and the script goes on; the test decides what that means. It exits
// non-zero only when it could not run the scenario at all. The server's stderr is ours.

import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { DEFAULT_REQUEST_TIMEOUT_MSEC } from "@modelcontextprotocol/sdk/shared/protocol.js";
import { LATEST_PROTOCOL_VERSION } from "@modelcontextprotocol/sdk/types.js";

const sdkPackage = new URL("./node_modules/@modelcontextprotocol/sdk/package.json", import.meta.url);

function emit(record) {
  process.stdout.write(`${JSON.stringify(record)}\n`);
}

function describe(error) {
  return {
    name: error?.name ?? "Error",
    code: typeof error?.code === "number" ? error.code : null,
    message: String(error?.message ?? error),
  };
}

async function request(client, origin, record, send) {
  let progress = 0;
  let lastProgress = null;
  const options = {
    // Counted so the test sees that notes arrived; the timeout stays the SDK's default and is
    // not reset by them (no timeout, no resetTimeoutOnProgress).
    onprogress: (note) => {
      progress += 1;
      lastProgress = note.message ?? null;
    },
  };
  const started = performance.now();
  const out = { ...record, started_ms: Math.round(started - origin) };
  try {
    out.result = await send(options);
  } catch (error) {
    out.error = describe(error);
  }
  out.elapsed_ms = Math.round(performance.now() - started);
  out.progress = progress;
  out.last_progress = lastProgress;
  emit(out);
  return out;
}

async function run(scenario) {
  const { version } = JSON.parse(readFileSync(sdkPackage, "utf8"));
  emit({
    sdk: {
      version,
      default_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MSEC,
      latest_protocol_version: LATEST_PROTOCOL_VERSION,
      node: process.version,
    },
  });
  const transport = new StdioClientTransport({
    command: scenario.server.command,
    args: scenario.server.args ?? [],
    env: scenario.server.env,
    stderr: "inherit",
  });
  const client = new Client({ name: "fleet-deploy-interop", version: "1.0.0" });
  const origin = performance.now();
  await client.connect(transport);
  emit({ connected: { server: client.getServerVersion() ?? null, elapsed_ms: Math.round(performance.now() - origin) } });
  try {
    for (const step of scenario.steps) {
      if (step.list_tools) {
        await request(client, origin, { step: step.step, call: 0, method: "tools/list" }, (options) =>
          client.listTools(undefined, options),
        );
        continue;
      }
      let done = await request(
        client,
        origin,
        { step: step.step, call: 0, method: "tools/call", tool: step.tool, arguments: step.arguments },
        (options) => client.callTool({ name: step.tool, arguments: step.arguments }, undefined, options),
      );
      for (let call = 1; call <= (step.follow ?? 0); call += 1) {
        const report = done.result?.structuredContent;
        if (done.error || done.result?.isError || report?.state !== "running") {
          break;
        }
        const args = { deployment_id: report.deployment_id };
        done = await request(
          client,
          origin,
          { step: step.step, call, method: "tools/call", tool: "deployment_status", arguments: args },
          (options) => client.callTool({ name: "deployment_status", arguments: args }, undefined, options),
        );
      }
    }
  } finally {
    await client.close();
  }
  emit({ done: true });
}

const scenario = JSON.parse(process.argv[2] ?? "null");
if (!scenario?.server?.command || !Array.isArray(scenario.steps)) {
  process.stderr.write("usage: node client.mjs '{\"server\": {\"command\": ...}, \"steps\": [...]}'\n");
  process.exit(2);
}
run(scenario).catch((error) => {
  process.stderr.write(`interop client failed: ${error?.stack ?? error}\n`);
  process.exit(1);
});
