// The fleet page: renders /api/fleet.json, then every update the server pushes (server-sent events).
// Everything from the fleet is inserted as text (textContent), never as HTML: topics and error
// messages on the page come from whoever could publish to the broker.
(() => {
  "use strict";
  const token = new URLSearchParams(location.search).get("token");
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) node.setAttribute(k, String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const short = (h) => (h ? h.slice(0, 12) + "…" : "—");
  const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "—");
  function ago(t, now) {
    if (!t) return "—";
    const s = Math.max(0, now - t);
    if (s < 2) return "just now";
    if (s < 120) return Math.round(s) + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    return clock(t);
  }
  function stateOf(d) {
    if (d.forgotten) return "forgotten";
    if (d.online === true) return "online";
    if (d.online === false) return "offline";
    return "unknown";
  }

  function renderSummary(f) {
    const online = f.devices.filter((d) => d.online && !d.forgotten).length;
    const forgotten = f.devices.filter((d) => d.forgotten).length;
    const cards = [
      [f.devices.length, "devices"], [online, "online"], [forgotten, "forgotten"],
      [f.requests.length, "unlearn requests"], [f.rejected_total, "rejected"], [f.parked.length, "parked"],
    ];
    $("#summary").replaceChildren(...cards.map(([n, label]) => el("div", { class: "card", "data-card": label }, el("b", {}, n), el("span", {}, label))));
  }

  function renderDevices(f) {
    const rows = f.devices.map((d) => {
      const state = stateOf(d);
      const agent = d.agent
        ? `${d.agent.accepted ?? 0} accepted, ${d.agent.rejected ?? 0} rejected` + (d.agent.parked !== undefined ? `, ${d.agent.parked} parked` : "")
        : "—";
      return el("tr", { "data-device": d.device_id, "data-state": state },
        el("td", {}, el("b", {}, d.device_id), d.registered ? null : el("div", { class: "bad" }, "not in devices.json")),
        el("td", { class: "state state-" + state }, state,
          d.forgotten && d.forgotten_by ? el("div", { class: "muted hash" }, "request " + short(d.forgotten_by)) : null),
        el("td", {}, d.profile || "—", d.main_arch ? el("div", { class: "muted" }, d.main_arch + " + " + (d.seed_arch || "?")) : null),
        el("td", {}, d.epoch ?? "—"),
        el("td", { class: "own-seed" }, d.seed_version ? "v" + d.seed_version + " " : "—", d.seed_sha256 ? el("span", { class: "hash", title: d.seed_sha256 }, short(d.seed_sha256)) : null),
        el("td", { class: "members", title: d.members_source === "agent" ? "as its running agent reports" : "seeds the broker holds for it" },
          d.forgotten ? "—" : ["main", ...d.members].join(", ")),
        el("td", {}, d.online && !d.forgotten ? "now (online)" : ago(d.last_seen, Date.now() / 1000)),
        el("td", { class: "muted" }, agent));
    });
    $("#devices tbody").replaceChildren(...rows);
  }

  function renderGraph(f) {
    const ids = f.devices.map((d) => d.device_id);
    const byId = Object.fromEntries(f.devices.map((d) => [d.device_id, d]));
    const W = 360, H = 300, R = Math.min(W, H) / 2 - 48;
    const pos = {};
    ids.forEach((id, k) => {
      const a = -Math.PI / 2 + (2 * Math.PI * k) / Math.max(ids.length, 1);
      pos[id] = [W / 2 + (ids.length > 1 ? R * Math.cos(a) : 0), H / 2 + (ids.length > 1 ? R * Math.sin(a) : 0)];
    });
    // One line per pair: both directions listed and seeded -> solid.
    const pairs = new Map();
    for (const e of f.edges) {
      if (!pos[e.device] || !pos[e.neighbor]) continue;
      const key = [e.device, e.neighbor].sort().join("\u0000");
      const p = pairs.get(key) || { a: e.device, b: e.neighbor, seeded: true, count: 0 };
      p.seeded = p.seeded && e.seeded;
      p.count += 1;
      pairs.set(key, p);
    }
    const svg = el("svg:svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "neighbour graph" });
    for (const p of pairs.values()) {
      const gone = byId[p.a].forgotten || byId[p.b].forgotten;
      const cls = "edge" + (gone ? " to-forgotten" : p.seeded && p.count === 2 ? "" : " unseeded");
      const [x1, y1] = pos[p.a], [x2, y2] = pos[p.b];
      svg.append(el("svg:line", { class: cls, x1, y1, x2, y2, "data-edge": p.a + "|" + p.b }));
    }
    for (const id of ids) {
      const d = byId[id];
      const [x, y] = pos[id];
      const state = stateOf(d);
      svg.append(el("svg:g", { class: "node " + state, "data-node": id, "data-state": state },
        el("svg:title", {}, `${id}: ${state}`),
        el("svg:circle", { cx: x, cy: y, r: 14 }),
        // Labels away from the middle, where the edges run.
        el("svg:text", { x, y: y < H / 2 ? y - 34 : y + 30 }, id),
        el("svg:text", { class: "sub", x, y: y < H / 2 ? y - 21 : y + 43 }, state === "forgotten" ? "forgotten" : d.profile || "")));
    }
    $("#graph").replaceChildren(svg);
  }

  function renderRequests(f) {
    if (!f.requests.length) {
      $("#requests").replaceChildren(el("p", { class: "muted" }, "none yet"));
      return;
    }
    const cards = f.requests.map((r) => {
      const verdict = r.complete ? el("span", { class: "ok" }, "complete") : el("span", { class: "bad" }, "missing " + r.missing.join(", "));
      const rows = r.receipts.map((c) => el("tr", { class: "receipt", "data-device": c.device_id },
        el("td", {}, el("b", {}, c.device_id)),
        el("td", { class: "hash" }, c.held ? "deleted " + short(c.removed_sha256) : "held none"),
        el("td", {}, ["main", ...c.members_after].join(", ")),
        el("td", {}, c.latency_s === null ? "—" : (c.latency_s * 1000).toFixed(0) + " ms"),
        el("td", { class: "muted" }, c.sources.join(", "))));
      for (const m of r.missing) {
        rows.push(el("tr", { class: "missing", "data-device": m }, el("td", {}, el("b", {}, m)), el("td", { class: "bad", colspan: 4 }, "no receipt yet")));
      }
      return el("div", { class: "request", "data-request": r.request_id, "data-target": r.target || "", "data-complete": r.complete },
        el("h4", {}, "forget ", el("b", {}, r.target || "?"), " ", verdict),
        el("div", { class: "meta" },
          `ordered by ${r.issuer || "?"} at ${clock(r.issued_at)}` +
          (r.reason ? ` · reason: ${r.reason}` : "") + ` · holders: ${r.holders.join(", ") || "none"}` +
          (r.latency_s !== null ? ` · last receipt after ${(r.latency_s * 1000).toFixed(0)} ms` : "") +
          ` · request `, el("code", {}, r.request_id)),
        el("table", {}, el("thead", {}, el("tr", {}, ["holder", "seed", "members after", "latency", "found in"].map((h) => el("th", {}, h)))),
          el("tbody", {}, rows)));
    });
    $("#requests").replaceChildren(...cards);
  }

  function renderRejected(f) {
    const chips = Object.entries(f.reasons).map(([reason, n]) => el("span", { class: "chip", "data-reason": reason }, reason, el("b", {}, n)));
    if (f.parked.length) chips.push(el("span", { class: "chip" }, "parked (sender not announced)", el("b", {}, f.parked.length)));
    $("#reasons").replaceChildren(...(chips.length ? chips : [el("span", { class: "muted" }, "nothing rejected")]));
    const row = (kind) => (r) => el("tr", { class: kind, "data-reason": r.reason },
      el("td", {}, kind), el("td", {}, r.reason), el("td", { class: "topic hash" }, r.topic), el("td", { class: "detail" }, r.detail));
    $("#rejected tbody").replaceChildren(...f.rejected.map(row("rejected")), ...f.parked.map(row("parked")));
    const agents = Object.entries(f.agent_reasons);
    $("#agent-reasons").replaceChildren(agents.length
      ? el("table", {}, el("tbody", {}, agents.map(([d, reasons]) => el("tr", { "data-device": d }, el("td", {}, el("b", {}, d)),
          el("td", {}, Object.entries(reasons).map(([k, n]) => `${k}: ${n}`).join(", ") || "nothing rejected")))))
      : el("p", { class: "muted" }, "no agent status files given (--state-dir)"));
  }

  function render(f) {
    try {
      $("#fleet-name").textContent = f.fleet;
      document.title = "hdus-edge fleet " + f.fleet;
      const b = f.broker || {};
      const loading = b.seed_inboxes !== undefined && b.seed_inboxes < f.devices.length
        ? ` (loading seeds ${b.seed_inboxes}/${f.devices.length})` : "";
      $("#broker").textContent = (b.url || "") + (b.connected === false ? " (broker link down)" : loading);
      $("#updated").textContent = "updated " + clock(f.generated_at);
      const problems = f.problems || [];
      $("#problems").hidden = !problems.length;
      $("#problems").textContent = problems.join(" · ");
      renderSummary(f);
      renderGraph(f);
      renderDevices(f);
      renderRequests(f);
      renderRejected(f);
      document.body.dataset.generatedAt = String(f.generated_at);
      document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
    } catch (err) {
      $("#problems").hidden = false;
      $("#problems").textContent = "could not show an update: " + err;
    }
  }

  function setLive(on) {
    const pill = $("#live");
    pill.textContent = on ? "live" : "reconnecting";
    pill.className = "pill " + (on ? "pill-live" : "pill-wait");
  }

  // "… ago" moves on between pushes (an idle fleet pushes nothing).
  let last = null;
  const show = (f) => {
    if (last && f.generated_at < last.generated_at) return; // an older answer that arrived late
    last = f;
    render(f);
  };
  setInterval(() => { if (last) render(last); }, 5000);

  fetch("api/fleet.json" + query, { cache: "no-store" }).then((r) => r.json()).then(show).catch(() => setLive(false));
  const events = new EventSource("api/events" + query);
  events.addEventListener("fleet", (ev) => show(JSON.parse(ev.data)));
  events.onopen = () => setLive(true);
  events.onerror = () => setLive(false);
})();
