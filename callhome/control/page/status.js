// The status page: reads the JSON API with the bearer token kept in this
// tab (sessionStorage), refreshes every 10 s. Every value is put in the page
// as text (textContent), never as HTML: device data is not trusted.
"use strict";
const KEY = "callhome-token";
const ORDER = ["overdue", "supervision-failed", "failed-auth", "failed-not-allowed", "connecting", "authenticating", "connected", "disconnected"];

function token() {
  // A link may carry the token in its fragment (never sent to the server): keep it, then drop it from the address.
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem(KEY);
}

async function api(path) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw Object.assign(new Error("unauthorized"), { unauthorized: true });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function when(value) {
  if (value === null || value === undefined) return "never";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return isNaN(date) ? String(value) : date.toLocaleString();
}

function fill(table, rows, columns) {
  const body = document.querySelector("#" + table + " tbody");
  body.replaceChildren();
  if (!rows.length) {
    const tr = body.insertRow();
    const td = tr.insertCell();
    td.colSpan = columns.length;
    td.className = "empty";
    td.textContent = "none";
    return;
  }
  for (const row of rows) {
    const tr = body.insertRow();
    for (const [value, cls] of columns.map((c) => c(row))) {
      const td = tr.insertCell();
      td.textContent = value === null || value === undefined ? "" : String(value);
      if (cls) td.className = cls;
    }
    if (row.name) tr.dataset.device = row.name;
    if (row.status) tr.dataset.status = row.status;
  }
}

function rank(status) {
  const i = ORDER.indexOf(status);
  return i < 0 ? ORDER.length : i;
}

async function refresh() {
  try {
    const [devices, sessions, events, quarantine] = await Promise.all([
      api("/devices"), api("/sessions"), api("/events?since=" + encodeURIComponent(new Date(Date.now() - 3600e3).toISOString()) + "&limit=1000"), api("/quarantine"),
    ]);
    document.getElementById("login").hidden = true;
    document.getElementById("status").hidden = false;
    const list = devices.devices.slice().sort((a, b) => rank(a.status) - rank(b.status) || a.name.localeCompare(b.name));
    fill("devices", list, [
      (d) => [d.name], (d) => [d.status, "status status-" + d.status], (d) => [when(d.last_seen), "wide"],
      (d) => [d.calls], (d) => [d.last_error, "wide error"],
    ]);
    const counts = {};
    for (const d of list) counts[d.status] = (counts[d.status] || 0) + 1;
    document.getElementById("device-count").textContent = "(" + list.length + ")";
    document.getElementById("summary").textContent =
      Object.entries(counts).map(([s, n]) => n + " " + s).join(", ") + "; " + sessions.sessions.length + " open sessions; updated " + new Date().toLocaleTimeString();
    fill("sessions", sessions.sessions, [(s) => [s.device], (s) => [s.transport], (s) => [s.peer, "wide"], (s) => [when(s.started)]]);
    fill("events", events.events.slice(-20).reverse(), [(e) => [when(e.time)], (e) => [e.kind], (e) => [e.message, "error"]]);
    fill("quarantine", quarantine.quarantine || quarantine.pending || [], [
      (q) => [q.fingerprint, "error"], (q) => [q.key_type], (q) => [q.certificate ? q.certificate.subject : "", "wide error"], (q) => [q.source],
    ]);
  } catch (error) {
    if (error.unauthorized) {
      sessionStorage.removeItem(KEY);
      document.getElementById("status").hidden = true;
      document.getElementById("login").hidden = false;
      document.getElementById("summary").textContent = "sign in";
      return;
    }
    document.getElementById("summary").textContent = "cannot read the API: " + error.message;
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
  refresh();
});
refresh();
setInterval(refresh, 10000);
