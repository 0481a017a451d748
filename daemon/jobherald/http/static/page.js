// Keeps the job list current without reloading: this page's rows from /api/jobs every
// two seconds (answered 304 when nothing changed), the counts from /api/counts.
"use strict";
(function () {
  var table = document.getElementById("jobs");
  if (!table) { return; }
  var filter = table.getAttribute("data-state") || null;
  // The page as loaded: its filters and cursor, asked again for the same rows.
  var query = new URLSearchParams(window.location.search);
  var etag = null;

  function when(value) {
    if (!value) { return "-"; }
    return value.replace("T", " ").replace(/(\.\d+)?(Z|\+00:00)$/, " UTC");
  }
  function percent(value) { return Math.round(value * 100) + "%"; }
  // A failure reason as the page and messages write it: "app orders: E42: message".
  function reason(r) {
    var where = [r.resource_type, r.resource_name].filter(Boolean).join(" ");
    var what = [r.error_code, r.error_msg].filter(Boolean).join(": ");
    return where && what ? where + ": " + what : (where || what || "(no details)");
  }
  function cell(label, cls) {
    var td = document.createElement("td");
    td.setAttribute("data-label", label);
    if (cls) { td.className = cls; }
    return td;
  }
  function row(job) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-id", job.key);
    tr.className = "state-" + job.status;
    var name = cell("Job");
    var a = document.createElement("a");
    a.href = "/jobs/" + encodeURIComponent(job.key);
    a.textContent = job.name;
    var id = document.createElement("small");
    id.className = "muted";
    id.textContent = job.key;
    name.append(a, document.createElement("br"), id);
    var source = cell("Source");
    source.textContent = job.source;
    var state = cell("State", "state");
    var badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = job.status;
    state.append(badge);
    if (job.silenced) {
      var quiet = document.createElement("small");
      quiet.className = "silenced";
      quiet.title = "silence " + job.silenced;
      quiet.textContent = " silenced";
      state.append(quiet);
    }
    if (job.archive_state) {
      var archive = document.createElement("small");
      archive.textContent = " archive " + job.archive_state;
      state.append(archive);
    }
    var progress = cell("Progress", "progress");
    if (job.progress === null || job.progress === undefined) {
      progress.textContent = "-";
    } else {
      var bar = document.createElement("progress");
      bar.max = 1;
      bar.value = job.progress;
      bar.textContent = percent(job.progress);
      var pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = " " + percent(job.progress);
      progress.append(bar, pct);
    }
    var eta = cell("ETA", "eta");
    eta.textContent = when(job.eta);
    var changed = cell("Last change", "changed");
    changed.textContent = when(job.last_changed_at);
    var error = cell("Last error", "error");
    error.textContent = job.error || job.archive_error || (
      job.status === "failed" && job.reasons.length ? reason(job.reasons[0]) : "");
    tr.append(name, source, state, progress, eta, changed, error);
    return tr;
  }
  function count(counts) {
    document.querySelectorAll("[data-count]").forEach(function (el) {
      el.textContent = counts[el.getAttribute("data-count")] || 0;
    });
    document.title = "jobherald: " + (counts.all || 0) + " jobs";
  }
  function render(shown) {
    var body = document.createElement("tbody");
    shown.forEach(function (j) { body.append(row(j)); });
    if (!shown.length) {
      var tr = document.createElement("tr");
      tr.className = "empty";
      var td = document.createElement("td");
      td.colSpan = 7;
      td.textContent = "no jobs" + (filter ? " " + filter : "");
      tr.append(td);
      body.append(tr);
    }
    table.replaceChild(body, table.tBodies[0]);
    var asOf = document.getElementById("as-of");
    if (asOf) { asOf.textContent = when(new Date().toISOString()); }
  }
  function rows() {
    var headers = etag ? { "If-None-Match": etag } : {};
    return fetch("/api/jobs?" + query.toString(), {
      credentials: "same-origin", cache: "no-store", headers: headers
    }).then(function (r) {
      if (r.status === 304) { return; }
      if (!r.ok) { throw new Error(r.status); }
      etag = r.headers.get("ETag");
      return r.json().then(render);
    });
  }
  function counts() {
    var source = query.get("source");
    return fetch("/api/counts" + (source ? "?source=" + encodeURIComponent(source) : ""), {
      credentials: "same-origin", cache: "no-store"
    }).then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(count);
  }
  function refresh() {
    Promise.all([rows(), counts()])
      .catch(function () { /* the daemon restarting: the next round tries again */ })
      .then(function () { setTimeout(refresh, 2000); });
  }
  setTimeout(refresh, 2000);
})();
