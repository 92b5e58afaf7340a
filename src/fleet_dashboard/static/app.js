// fleet-deploy's dashboard: one page, no framework, no build step, nothing from the internet.
//
// Why it is written this way:
// - Every string a host sent reaches the DOM through textContent (the server already made it
//   printable); nothing here ever assigns innerHTML, so host text cannot become markup.
// - No inline script or style: the CSP allows only this file and style.css. Widths of the
//   timeline's bars are set through the CSSOM (element.style), which the CSP permits.
// - 1,000 hosts: the table is built once per `fleet` event into a DocumentFragment; `host`
//   and `deployment` events touch only the cells that changed; all DOM work waits for the
//   next animation frame, so a burst of events costs one layout, not one per event.
// - Server-sent events (/api/events) bring every change; the browser's EventSource
//   reconnects by itself, and the server answers a new connection with the whole fleet.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);

  // -- state --------------------------------------------------------------------------------

  const state = {
    fleet: null, // the last /api/fleet body
    rows: new Map(), // hostname -> {row, tr, cells}
    deployments: new Map(), // id -> Live
    session: { actions: false, logged_in: false, user: null, csrf: null, totp: false },
    view: "fleet",
    viewArg: null,
  };

  // -- small helpers --------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function link(href, text, className) {
    const a = el("a", className, text);
    a.href = href;
    return a;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function setText(node, text) {
    const value = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  // Writes only what changed: an unchanged class or title written again still costs the
  // browser a style check, and a row update touches a dozen of them, a thousand rows at once.
  function setProp(node, name, value) {
    if (node[name] !== value) node[name] = value;
  }

  function yesNo(value) {
    if (value === true) return "yes";
    if (value === false) return "no";
    return "?";
  }

  function shortRevision(revision) {
    if (!revision) return "";
    return /^[0-9a-f]{40}$/.test(revision) ? revision.slice(0, 12) : revision;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const delta = Math.max(0, Date.now() / 1000 - seconds);
    if (delta < 60) return `${Math.round(delta)} s ago`;
    if (delta < 3600) return `${Math.round(delta / 60)} min ago`;
    if (delta < 86400) return `${Math.round(delta / 3600)} h ago`;
    return `${Math.round(delta / 86400)} d ago`;
  }

  function when(seconds) {
    if (seconds === null || seconds === undefined) return "";
    return new Date(seconds * 1000).toLocaleString();
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  }

  function statusClass(status) {
    return `st-${String(status || "unknown").replace(/[^a-z_-]/gi, "")}`;
  }

  function notice(text) {
    const box = $("#notice");
    setText(box, text || "");
    box.hidden = !text;
  }

  // -- one animation frame for all DOM work -----------------------------------------------------

  const pending = { fleet: null, hosts: new Map(), deployments: new Map(), view: false };
  let frameAsked = false;

  function schedule() {
    if (frameAsked) return;
    frameAsked = true;
    requestAnimationFrame(flush);
  }

  function flush() {
    frameAsked = false;
    if (pending.fleet) {
      const body = pending.fleet;
      pending.fleet = null;
      pending.hosts.clear(); // the whole fleet supersedes single rows seen before it
      renderFleet(body);
    }
    if (pending.hosts.size) {
      for (const row of pending.hosts.values()) updateRow(row);
      pending.hosts.clear();
      applyFilters();
    }
    if (pending.deployments.size) {
      for (const live of pending.deployments.values()) renderDeployment(live);
      pending.deployments.clear();
      orderDeployments();
    }
    if (pending.view) {
      pending.view = false;
      refreshOpenView(true);
    }
  }

  // -- the fleet table ----------------------------------------------------------------------------

  const CELLS = [
    "host", "tier", "role", "kind", "revision", "behind",
    "reboot", "last-deploy", "version", "busy", "problems",
  ];

  function buildRow(row) {
    const tr = document.createElement("tr");
    const cells = {};
    for (const name of CELLS) {
      const td = document.createElement("td");
      td.className = name;
      cells[name] = td;
      tr.appendChild(td);
    }
    cells.host.appendChild(link("", ""));
    const entry = { row: null, tr, cells };
    fillRow(entry, row);
    return entry;
  }

  function fillRow(entry, row) {
    const { tr, cells } = entry;
    entry.row = row;
    if (tr.dataset.host !== row.hostname) tr.dataset.host = row.hostname;
    const rowClass = [!row.ok && "problem", !row.answered && "silent", row.busy && "is-busy"]
      .filter(Boolean).join(" ");
    setProp(tr, "className", rowClass);
    const a = cells.host.firstChild;
    const href = `#/host/${encodeURIComponent(row.hostname)}`;
    if (a.getAttribute("href") !== href) a.setAttribute("href", href);
    setText(a, row.hostname);
    setText(cells.tier, row.tier);
    setText(cells.role, row.role || "");
    setText(cells.kind, row.kind || "");
    setText(cells.revision, shortRevision(row.revision));
    setProp(cells.revision, "title", row.revision || "");
    setText(cells.behind, row.answered ? yesNo(row.behind) : "");
    setProp(cells.behind, "className", row.behind === true ? "behind warn" : "behind");
    // "?" puzzles a first look at a fresh fleet: say what it is not known against.
    setProp(cells.behind, "title", row.answered && row.behind == null
      ? "unknown: no deploy to this tier is on record yet, or this host's revision cannot be told"
      : "");
    setText(cells.reboot, row.answered ? yesNo(row.needs_reboot) : "");
    setProp(cells.reboot, "className", row.needs_reboot === true ? "reboot warn" : "reboot");
    const job = row.last_job;
    if (job) {
      setText(cells["last-deploy"], `${job.action || "?"} ${job.status || "?"} ${age(job.finished_at)}`.trim());
      setProp(cells["last-deploy"], "className", `last-deploy ${statusClass(job.status)}`);
      setProp(cells["last-deploy"], "title", [job.revision, job.error, when(job.finished_at)].filter(Boolean).join(" · "));
    } else {
      setText(cells["last-deploy"], row.answered ? "none" : "");
      setProp(cells["last-deploy"], "className", "last-deploy");
      setProp(cells["last-deploy"], "title", "");
    }
    setText(cells.version, row.listener_version || "");
    setProp(cells.version, "className", row.outdated === true ? "version warn" : "version");
    setProp(cells.version, "title", row.outdated ? "older than this dashboard's fleet-deploy" : "");
    setText(cells.busy, row.busy ? "busy" : "");
    setText(cells.problems, (row.problems || []).join("; "));
  }

  function rowsChanged(rows) {
    if (rows.length !== state.rows.size) return true;
    return rows.some((row) => !state.rows.has(row.hostname));
  }

  function renderFleet(body) {
    state.fleet = body;
    const rows = body.hosts || [];
    const tbody = $("#fleet tbody");
    if (rowsChanged(rows)) {
      // A new set of hosts: one fragment, one insertion, one layout.
      const fragment = document.createDocumentFragment();
      const next = new Map();
      for (const row of rows) {
        const entry = buildRow(row);
        next.set(row.hostname, entry);
        fragment.appendChild(entry.tr);
      }
      state.rows = next;
      clear(tbody);
      tbody.appendChild(fragment);
    } else {
      for (const row of rows) fillRow(state.rows.get(row.hostname), row);
    }
    fillRoles(rows);
    applyFilters();
    setText($("#refreshed"), body.refreshed_at ? `refreshed ${age(body.refreshed_at)}` : "");
    $("#refreshed").title = when(body.refreshed_at);
    const notes = [];
    if (body.error) notes.push(body.error);
    if (body.tiers_hidden && body.tiers_hidden.length) {
      notes.push(`This dashboard's key may not read the ${body.tiers_hidden.join(" and ")} tier: its hosts are not shown.`);
    }
    notice(notes.join(" "));
    const seen = new Set();
    for (const live of body.deployments || []) {
      seen.add(live.id);
      renderDeployment(live);
    }
    for (const id of [...state.deployments.keys()]) {
      if (!seen.has(id)) removeDeployment(id);
    }
    orderDeployments();
    if (state.session.actions !== body.actions) loadSession();
  }

  function updateRow(row) {
    const entry = state.rows.get(row.hostname);
    if (entry) {
      fillRow(entry, row);
      return;
    }
    const added = buildRow(row);
    state.rows.set(row.hostname, added);
    $("#fleet tbody").appendChild(added.tr);
  }

  function fillRoles(rows) {
    const select = $("#filter-role");
    const roles = [...new Set(rows.map((row) => row.role).filter(Boolean))].sort();
    const have = [...select.options].slice(1).map((option) => option.value);
    if (have.join("\n") === roles.join("\n")) return;
    const chosen = select.value;
    while (select.options.length > 1) select.remove(1);
    for (const role of roles) select.appendChild(el("option", "", role));
    select.value = roles.includes(chosen) ? chosen : "";
  }

  function matchesState(row, wanted) {
    switch (wanted) {
      case "": return true;
      case "ok": return row.ok;
      case "problem": return !row.ok;
      case "behind": return row.behind === true;
      case "reboot": return row.needs_reboot === true;
      case "busy": return !!row.busy;
      case "failed": return !!row.last_job && row.last_job.status === "failed";
      case "silent": return !row.answered;
      case "outdated": return row.outdated === true;
      default: return true;
    }
  }

  function applyFilters() {
    const words = $("#filter").value.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const tier = $("#filter-tier").value;
    const role = $("#filter-role").value;
    const wanted = $("#filter-state").value;
    let shown = 0;
    let ok = 0;
    let busy = 0;
    for (const { row, tr } of state.rows.values()) {
      if (row.ok) ok += 1;
      if (row.busy) busy += 1;
      const haystack = [row.hostname, row.tier, row.role, row.kind, row.revision, row.listener_version]
        .filter(Boolean).join(" ").toLowerCase();
      const visible = (!tier || row.tier === tier)
        && (!role || row.role === role)
        && matchesState(row, wanted)
        && words.every((word) => haystack.includes(word));
      if (tr.hidden === visible) tr.hidden = !visible;
      if (visible) shown += 1;
    }
    const total = state.rows.size;
    const parts = [`${total} hosts`, `${ok} ok`, `${total - ok} not ok`, `${busy} busy`];
    if (shown !== total) parts.push(`${shown} shown`);
    setText($("#fleet-summary"), parts.join(" · "));
  }

  // -- live deployments -------------------------------------------------------------------------

  function countsText(counts) {
    return Object.entries(counts || {}).sort().map(([status, n]) => `${n} ${status}`).join(", ");
  }

  // A check runs no revision, and a cancel's "revision" is the deployment it stops.
  function deploymentTitle(live) {
    const action = live.action || "";
    if (action === "check") return `check on ${live.tier}`;
    if (action === "cancel") return `cancel of ${String(live.revision || "").slice(0, 12)} on ${live.tier}`;
    return `${action} ${shortRevision(live.revision)} on ${live.tier}`;
  }

  function hostLine(host) {
    return host.error ? `${host.error}${host.line ? ` — ${host.line}` : ""}` : host.line || "";
  }

  function deploymentBlock(live) {
    const block = el("details", "deployment");
    block.dataset.deployment = live.id;
    const summary = el("summary");
    summary.appendChild(link(`#/deployment/${encodeURIComponent(live.id)}`, live.id.slice(0, 12), "id"));
    summary.appendChild(el("span", "what"));
    summary.appendChild(el("span", "counts"));
    summary.appendChild(el("span", "state"));
    const stop = el("button", "cancel", "Cancel");
    stop.type = "button";
    stop.dataset.cancel = live.id;
    stop.dataset.tier = live.tier || "";
    stop.hidden = true;
    summary.appendChild(stop);
    block.appendChild(summary);
    block.appendChild(el("ul", "hosts"));
    return { block, items: new Map() };
  }

  function renderDeployment(live) {
    if (!live || !live.id) return;
    state.deployments.set(live.id, live);
    let view = deploymentViews.get(live.id);
    if (!view) {
      view = deploymentBlock(live);
      view.block.open = !live.ended;
      deploymentViews.set(live.id, view);
      $("#deployments").appendChild(view.block);
    }
    const { block, items } = view;
    if (block.dataset.ended !== String(!!live.ended)) {
      block.dataset.ended = String(!!live.ended);
      block.classList.toggle("ended", !!live.ended);
      if (live.ended) block.open = false; // ended ones fold; their hosts stay in the DOM
    }
    const summary = block.firstChild;
    setText(summary.children[1], deploymentTitle(live));
    setText(summary.children[2], countsText(live.counts));
    setText(summary.children[3], live.ended ? "ended" : "running");
    summary.children[4].hidden = !!live.ended || !state.session.logged_in;
    const list = block.lastChild;
    let fragment = null;
    for (const host of live.hosts || []) {
      let item = items.get(host.hostname);
      if (!item) {
        const li = el("li", "host");
        li.dataset.host = host.hostname;
        const cells = {
          name: link(`#/host/${encodeURIComponent(host.hostname)}`, host.hostname, "name"),
          status: el("span", "status"),
          phase: el("span", "phase"),
          line: el("span", "line"),
        };
        li.append(cells.name, cells.status, cells.phase, cells.line);
        item = { li, cells };
        items.set(host.hostname, item);
        (fragment ||= document.createDocumentFragment()).appendChild(li);
      }
      const { li, cells } = item;
      setText(cells.status, host.status);
      setProp(cells.status, "className", `status ${statusClass(host.status)}`);
      setText(cells.phase, host.final ? "" : host.phase || "");
      setText(cells.line, hostLine(host));
      setProp(li, "className", host.final ? "host final" : "host");
    }
    if (fragment) list.appendChild(fragment);
    if (state.view === "deployment" && state.viewArg === live.id) {
      pending.view = true;
      schedule();
    }
  }

  const deploymentViews = new Map(); // id -> {block, items}

  const ENDED_SHOWN = 3; // ended deployments shown above the hosts

  function removeDeployment(id) {
    const view = deploymentViews.get(id);
    if (view) view.block.remove();
    deploymentViews.delete(id);
    state.deployments.delete(id);
  }

  function orderDeployments() {
    // Running first (newest first), then the ended ones, newest first, as the server lists them.
    const box = $("#deployments");
    const lives = [...state.deployments.values()].sort((a, b) =>
      (a.ended - b.ended) || ((b.started_at || 0) - (a.started_at || 0)));
    let previous = null;
    let ended = 0;
    for (const live of lives) {
      const { block } = deploymentViews.get(live.id);
      const wantedNext = previous ? previous.nextSibling : box.firstChild;
      if (wantedNext !== block) box.insertBefore(block, wantedNext);
      previous = block;
      // A day's ended deployments would push the hosts off the screen: the newest few
      // stay in view, the others are on the History page (and at #/deployment/ID).
      const hide = !!live.ended && ++ended > ENDED_SHOWN;
      if (block.hidden !== hide) block.hidden = hide;
    }
  }

  // -- events -------------------------------------------------------------------------------------

  function connect() {
    const source = new EventSource("/api/events");
    const indicator = $("#connection");
    source.addEventListener("open", () => {
      setText(indicator, "live");
      indicator.className = "connection live";
    });
    source.addEventListener("error", () => {
      // EventSource retries by itself; say so instead of failing silently.
      setText(indicator, "reconnecting");
      indicator.className = "connection down";
    });
    source.addEventListener("fleet", (event) => {
      pending.fleet = JSON.parse(event.data);
      if (state.view !== "fleet") pending.view = true;
      schedule();
    });
    source.addEventListener("host", (event) => {
      const row = JSON.parse(event.data);
      pending.hosts.set(row.hostname, row);
      if (state.view === "host" && state.viewArg === row.hostname) pending.view = true;
      schedule();
    });
    source.addEventListener("deployment", (event) => {
      const live = JSON.parse(event.data);
      pending.deployments.set(live.id, live);
      schedule();
    });
  }

  // -- requests -----------------------------------------------------------------------------

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) {
      const said = body && body.error ? body.error : `${response.status} ${response.statusText}`;
      throw new Error(said);
    }
    return body;
  }

  async function postJSON(url, payload) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (state.session.csrf) headers["X-CSRF-Token"] = state.session.csrf;
    const response = await fetch(url, {
      method: "POST", headers, body: JSON.stringify(payload), credentials: "same-origin",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    return { response, body };
  }

  // -- views (routing by fragment) --------------------------------------------------------------

  const VIEWS = ["fleet", "host", "deployment", "history"];
  let viewToken = 0; // a newer navigation makes an older, slower answer irrelevant

  function route() {
    const hash = location.hash.replace(/^#\/?/, "");
    const [name, ...rest] = hash.split("/");
    let arg = rest.length ? rest.join("/") : null;
    try {
      if (arg !== null) arg = decodeURIComponent(arg);
    } catch {
      // A malformed escape (a link such as #/host/%E0): kept as typed, which names no host,
      // rather than an exception that would leave the whole page empty.
    }
    state.view = VIEWS.includes(name) && name !== "fleet" ? name : "fleet";
    state.viewArg = arg;
    for (const view of VIEWS) $(`#view-${view}`).hidden = view !== state.view;
    for (const a of document.querySelectorAll("nav a")) {
      a.classList.toggle("current", a.dataset.nav === state.view);
    }
    refreshOpenView();
  }

  function refreshOpenView(liveUpdate = false) {
    if (state.view === "host") showHost(state.viewArg);
    else if (state.view === "deployment") showDeployment(state.viewArg, liveUpdate);
    else if (state.view === "history") showHistory();
  }

  function factsTable(pairs) {
    const table = el("table", "facts");
    for (const [label, value] of pairs) {
      const tr = el("tr");
      tr.append(el("th", "", label), el("td", "", value));
      table.appendChild(tr);
    }
    return table;
  }

  async function showHost(name) {
    const token = ++viewToken;
    const box = $("#host-detail");
    let body;
    try {
      body = await getJSON(`/api/hosts/${encodeURIComponent(name || "")}`);
    } catch (error) {
      if (token !== viewToken) return;
      clear(box);
      box.appendChild(el("h2", "", name));
      box.appendChild(el("p", "error", error.message));
      return;
    }
    if (token !== viewToken) return;
    clear(box);
    const row = body.row;
    box.appendChild(el("h2", "", name));
    if (row) {
      box.appendChild(factsTable([
        ["tier", row.tier], ["role", row.role || ""], ["kind", row.kind || ""],
        ["answered", yesNo(row.answered)], ["revision", row.revision || ""],
        ["behind", yesNo(row.behind)], ["needs reboot", yesNo(row.needs_reboot)],
        ["generation", row.generation ?? ""], ["current system", row.current_system || ""],
        ["listener", row.listener_version || ""], ["busy", yesNo(row.busy)],
        ["problems", (row.problems || []).join("; ") || "none"],
      ]));
    }
    box.appendChild(el("h3", "", "Recent jobs"));
    const jobs = body.jobs || [];
    if (!jobs.length) box.appendChild(el("p", "muted", "The host reported no jobs."));
    const list = el("div", "jobs");
    for (const job of jobs) {
      const item = el("div", `job ${statusClass(job.status)}`);
      item.dataset.job = job.request_id;
      const head = el("div", "job-head");
      head.append(
        link(`#/deployment/${encodeURIComponent(job.request_id)}`, job.request_id.slice(0, 12), "id"),
        el("span", "action", job.action || ""),
        el("span", "revision", shortRevision(job.revision)),
        el("span", `status ${statusClass(job.status)}`, job.status || job.phase),
        el("span", "when", job.finished_at ? when(job.finished_at) : when(job.started_at)),
        el("span", "duration", duration(job.duration_s)),
      );
      item.appendChild(head);
      if (job.error || job.message) item.appendChild(el("p", "message", job.error ? `${job.error}: ${job.message || ""}` : job.message));
      if (job.status === "failed" && job.log_tail && job.log_tail.length) {
        item.appendChild(el("pre", "log-tail", job.log_tail.join("\n")));
      }
      list.appendChild(item);
    }
    box.appendChild(list);
    for (const pre of list.querySelectorAll("pre.log-tail")) showEnd(pre);
    // A host's list of recent jobs carries no output; the newest failure's tail is in its
    // deployment (live, or recorded), which is one more request, made only for that job.
    const failed = jobs.find((job) => job.status === "failed");
    if (failed && !(failed.log_tail && failed.log_tail.length)) {
      const tail = await deploymentTail(failed.request_id, name);
      if (token !== viewToken) return;
      const item = list.querySelector(`[data-job="${CSS.escape(failed.request_id)}"]`);
      if (item) item.appendChild(tail.length ? el("pre", "log-tail", tail.join("\n")) : el("p", "muted", "No output of this failure is known."));
      if (item && tail.length) showEnd(item.lastChild);
    }
  }

  // A log tail opens at its end: the last lines are the ones that say why a job failed.
  function showEnd(pre) {
    pre.scrollTop = pre.scrollHeight;
  }

  async function deploymentTail(id, hostname) {
    try {
      const body = await getJSON(`/api/deployments/${encodeURIComponent(id)}`);
      const recorded = body.record && (body.record.hosts || []).find((h) => h.hostname === hostname);
      if (recorded && recorded.log_tail && recorded.log_tail.length) return recorded.log_tail;
      const live = body.live && (body.live.hosts || []).find((h) => h.hostname === hostname);
      return live && live.line ? [live.line] : [];
    } catch (error) {
      return [];
    }
  }

  // The open deployment's answer, kept so that its live updates (up to four a second) are
  // drawn from the events alone, without asking the server again each time.
  let shownDeployment = { id: null, body: null };

  async function showDeployment(id, liveUpdate = false) {
    const box = $("#deployment-detail");
    let body;
    if (liveUpdate && shownDeployment.id === id && shownDeployment.body) {
      body = shownDeployment.body;
    } else {
      const token = ++viewToken;
      try {
        body = await getJSON(`/api/deployments/${encodeURIComponent(id || "")}`);
      } catch (error) {
        if (token !== viewToken) return;
        clear(box);
        clear($("#timeline"));
        box.appendChild(el("h2", "", id));
        box.appendChild(el("p", "error", error.message));
        return;
      }
      if (token !== viewToken) return;
      shownDeployment = { id, body };
    }
    const live = state.deployments.get(id) || body.live;
    const record = body.record;
    clear(box);
    box.appendChild(el("h2", "", `Deployment ${id}`));
    const source = live || record;
    if (!source) {
      box.appendChild(el("p", "muted", "Neither running here nor recorded in the history this key reads."));
      clear($("#timeline"));
      return;
    }
    box.appendChild(factsTable([
      ["tier", source.tier], ["action", source.action || ""], ["revision", source.revision || ""],
      ["started", when(source.started_at)],
      ["state", live ? (live.ended ? "ended" : "running") : "recorded"],
      ["hosts", countsText(live ? live.counts : countsOf(record.hosts))],
      ...(record ? [["signature", record.signature], ["targets", (record.targets || []).join(", ") || "not recorded"]] : []),
    ]));
    const table = el("table", "deployment-hosts");
    const head = el("tr");
    for (const label of ["host", "status", "duration", "latest line"]) head.appendChild(el("th", "", label));
    table.appendChild(head);
    const hosts = live ? live.hosts : record.hosts;
    for (const host of hosts) {
      const tr = el("tr");
      tr.dataset.host = host.hostname;
      const name = el("td");
      name.appendChild(link(`#/host/${encodeURIComponent(host.hostname)}`, host.hostname));
      tr.append(
        name,
        el("td", `status ${statusClass(host.status)}`, host.status),
        el("td", "", duration(host.duration_s)),
        el("td", "line", live ? hostLine(host) : [host.error, host.message].filter(Boolean).join(": ")),
      );
      table.appendChild(tr);
    }
    box.appendChild(table);
    renderTimeline(live, record);
  }

  function countsOf(hosts) {
    const counts = {};
    for (const host of hosts || []) {
      const key = host.final ? host.status : "running";
      counts[key] = (counts[key] || 0) + 1;
    }
    return counts;
  }

  // A bar per host, one segment per phase: from each event to the next (the last one to the
  // host's end, or to now while it runs). Widths are shares of the deployment's whole span.
  function renderTimeline(live, record) {
    const box = $("#timeline");
    clear(box);
    const lanes = [];
    if (live) {
      for (const host of live.hosts || []) {
        const events = (host.events || []).filter((e) => typeof e.at === "number");
        if (!events.length) continue;
        lanes.push({ host, events, final: host.final });
      }
    } else if (record) {
      for (const host of record.hosts || []) {
        if (typeof host.at !== "number" || typeof record.started_at !== "number") continue;
        const start = host.duration_s ? host.at - host.duration_s : record.started_at;
        lanes.push({
          host,
          events: [{ at: start, status: "running", phase: null }, { at: host.at, status: host.status, phase: null }],
          final: host.final,
        });
      }
    }
    if (!lanes.length) {
      box.appendChild(el("p", "muted", "No timed events yet."));
      return;
    }
    const now = Date.now() / 1000;
    const start = Math.min(...lanes.map((lane) => lane.events[0].at));
    const end = Math.max(...lanes.map((lane) => (lane.final ? lane.events[lane.events.length - 1].at : now)));
    const span = Math.max(end - start, 0.001);
    const axis = el("div", "axis");
    axis.append(el("span", "", when(start)), el("span", "", `${duration(end - start)} in all`));
    box.appendChild(axis);
    const fragment = document.createDocumentFragment();
    for (const lane of lanes) {
      const row = el("div", "lane");
      row.dataset.host = lane.host.hostname;
      row.appendChild(el("span", "lane-name", lane.host.hostname));
      const track = el("div", "track");
      const events = lane.events;
      for (let i = 0; i < events.length; i += 1) {
        const event = events[i];
        const last = i === events.length - 1;
        const until = last ? (lane.final ? event.at : now) : events[i + 1].at;
        const label = event.phase || event.status;
        const bar = el("div", `bar ${statusClass(event.status)} ph-${String(label || "").replace(/[^a-z_-]/gi, "")}`);
        bar.style.left = `${((event.at - start) / span) * 100}%`;
        bar.style.width = `${Math.max(((until - event.at) / span) * 100, last && lane.final ? 0.6 : 0.2)}%`;
        bar.title = `${label} at ${when(event.at)}`;
        if (until - event.at > span * 0.08) bar.textContent = label;
        track.appendChild(bar);
      }
      row.appendChild(track);
      row.appendChild(el("span", `lane-end ${statusClass(lane.host.status)}`, lane.host.status));
      fragment.appendChild(row);
    }
    box.appendChild(fragment);
  }

  async function showHistory() {
    const token = ++viewToken;
    const form = $("#history-filter");
    const query = new URLSearchParams();
    for (const name of ["tier", "host", "limit"]) {
      const value = form.elements[name].value.trim();
      if (value) query.set(name, value);
    }
    const tbody = $("#history tbody");
    const notes = $("#history-notes");
    let body;
    try {
      body = await getJSON(`/api/history?${query}`);
    } catch (error) {
      if (token !== viewToken) return;
      clear(tbody);
      clear(notes);
      notes.appendChild(el("li", "error", error.message));
      return;
    }
    if (token !== viewToken) return;
    clear(notes);
    for (const note of body.notes || []) notes.appendChild(el("li", "", note));
    const fragment = document.createDocumentFragment();
    for (const record of body.records || []) {
      const tr = el("tr");
      tr.dataset.deployment = record.id;
      const id = el("td");
      id.appendChild(link(`#/deployment/${encodeURIComponent(record.id)}`, record.id.slice(0, 12)));
      tr.append(
        id,
        el("td", "", record.tier),
        el("td", "", record.action || ""),
        el("td", "", shortRevision(record.revision)),
        el("td", "", when(record.started_at)),
        el("td", "", duration(record.duration_s)),
        el("td", "counts", countsText(countsOf(record.hosts))),
        el("td", `signature sig-${record.signature}`, record.signature),
      );
      fragment.appendChild(tr);
    }
    clear(tbody);
    tbody.appendChild(fragment);
    if (!(body.records || []).length) {
      const tr = el("tr");
      const td = el("td", "muted", "No deployment recorded.");
      td.colSpan = 8;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
  }

  // -- session, login and actions ---------------------------------------------------------------

  async function loadSession() {
    try {
      state.session = await getJSON("/api/session");
    } catch (error) {
      state.session = { actions: false, logged_in: false, user: null, csrf: null, totp: false };
    }
    const { actions, logged_in: loggedIn, user, totp } = state.session;
    $("#login").hidden = !actions || loggedIn;
    $("#totp-label").hidden = !totp;
    $("#actions").hidden = !actions || !loggedIn;
    $("#logout").hidden = !actions || !loggedIn;
    setText($("#user"), actions && loggedIn ? `logged in as ${user}` : actions ? "" : "read-only");
    for (const [id, view] of deploymentViews) {
      const live = state.deployments.get(id);
      view.block.firstChild.children[4].hidden = !loggedIn || !live || !!live.ended;
    }
  }

  async function login(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const message = $("#login-error");
    setText(message, "");
    const { response, body } = await postJSON("/login", {
      password: form.elements.password.value,
      totp: form.elements.totp.value.trim(),
    });
    form.elements.password.value = "";
    form.elements.totp.value = "";
    if (response.ok) {
      await loadSession();
      return;
    }
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After");
      setText(message, (body && body.error) || `Too many attempts: try again in ${wait} s.`);
    } else {
      setText(message, (body && body.error) || "Wrong password or code.");
    }
  }

  async function logout() {
    await postJSON("/logout", {});
    await loadSession();
  }

  function isProd(target) {
    return /(^|\.)prod(\.|$)/.test(target.trim());
  }

  async function act(url, payload, told = (body) => `started ${body.deployment_id}`) {
    const result = $("#action-result");
    result.className = "";
    setText(result, "sending …");
    const { response, body } = await postJSON(url, payload);
    if (response.status === 202 && body) {
      setText(result, told(body));
      result.className = "ok";
      return;
    }
    result.className = "error";
    if (response.status === 401) await loadSession();
    setText(result, (body && body.error) || `refused: ${response.status}`);
  }

  function deploy(event) {
    event.preventDefault();
    const form = event.currentTarget;
    act("/api/actions/deploy", {
      target: form.elements.target.value.trim(),
      revision: form.elements.revision.value.trim(),
      action: form.elements.action.value,
      confirm: form.elements.confirm.value.trim(),
    });
    form.elements.confirm.value = "";
  }

  function check(event) {
    event.preventDefault();
    const form = event.currentTarget;
    act("/api/actions/check", {
      target: form.elements.target.value.trim(),
      confirm: form.elements.confirm.value.trim(),
    });
    form.elements.confirm.value = "";
  }

  function cancel(deploymentId, tier) {
    // A deployment not seen on the test tier may be prod's: its id typed again (the server
    // refuses the cancel otherwise).
    let confirm = "";
    if (tier !== "test") {
      confirm = (window.prompt(`Cancel a ${tier || "possibly prod"} deployment: type its id ${deploymentId} to confirm`) || "").trim();
      if (!confirm) return;
    }
    act("/api/actions/cancel", { deployment_id: deploymentId, host: null, confirm }, (body) => {
      // What each host did (stopped, refused, activating, finished): a few names, then a count.
      const answers = body.answers || [];
      const told = answers.slice(0, 10).map((a) => `${a.hostname} ${a.outcome}`).join(", ");
      const more = answers.length > 10 ? ` and ${answers.length - 10} more` : "";
      return `cancel of ${deploymentId.slice(0, 12)}: ${told ? told + more : "no host answered"}`;
    });
  }

  // -- start --------------------------------------------------------------------------------------

  function start() {
    for (const id of ["#filter", "#filter-tier", "#filter-role", "#filter-state"]) {
      $(id).addEventListener("input", applyFilters);
    }
    $("#history-filter").addEventListener("submit", (event) => {
      event.preventDefault();
      showHistory();
    });
    $("#login").addEventListener("submit", login);
    $("#logout").addEventListener("click", logout);
    $("#action-deploy").addEventListener("submit", deploy);
    $("#action-check").addEventListener("submit", check);
    // A prod target asks for its name typed again (the server refuses it otherwise).
    for (const form of [$("#action-deploy"), $("#action-check")]) {
      const target = form.elements.target;
      target.addEventListener("input", () => {
        $(".confirm", form).hidden = !isProd(target.value);
      });
    }
    $("#deployments").addEventListener("click", (event) => {
      const button = event.target.closest("button.cancel");
      if (!button) return;
      event.preventDefault(); // inside <summary>: do not fold the block
      cancel(button.dataset.cancel, button.dataset.tier);
    });
    // "refreshed 20 s ago" keeps counting between two fleet events.
    setInterval(() => {
      if (state.fleet && state.fleet.refreshed_at) {
        setText($("#refreshed"), `refreshed ${age(state.fleet.refreshed_at)}`);
      }
    }, 5000);
    window.addEventListener("hashchange", route);
    route();
    loadSession();
    connect();
  }

  start();
})();
