// Keeps the job list current without reloading: /api/jobs every two seconds.
"use strict";
(function () {
  var table = document.getElementById("jobs");
  if (!table) { return; }
  var filter = table.getAttribute("data-state") || null;
  var order = ["running", "pending", "unknown", "succeeded", "failed", "lost"];

  function when(value) {
    if (!value) { return "-"; }
    return value.replace("T", " ").replace(/(\.\d+)?(Z|\+00:00)$/, " UTC");
  }
  function percent(value) { return Math.round(value * 100) + "%"; }
  function cell(label, cls) {
    var td = document.createElement("td");
    td.setAttribute("data-label", label);
    if (cls) { td.className = cls; }
    return td;
  }
  function row(job) {
    var tr = document.createElement("tr");
    tr.setAttribute("data-id", job.id);
    tr.className = "state-" + job.status;
    var name = cell("Job");
    var a = document.createElement("a");
    a.href = "/jobs/" + encodeURIComponent(job.id);
    a.textContent = job.name;
    var id = document.createElement("small");
    id.className = "muted";
    id.textContent = job.id;
    name.append(a, document.createElement("br"), id);
    var source = cell("Source");
    source.textContent = job.source;
    var state = cell("State", "state");
    var badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = job.status;
    state.append(badge);
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
    error.textContent = job.error || job.archive_error || "";
    tr.append(name, source, state, progress, eta, changed, error);
    return tr;
  }
  function render(jobs) {
    var counts = { all: jobs.length };
    jobs.forEach(function (j) { counts[j.status] = (counts[j.status] || 0) + 1; });
    document.querySelectorAll("[data-count]").forEach(function (el) {
      el.textContent = counts[el.getAttribute("data-count")] || 0;
    });
    var shown = jobs.filter(function (j) { return !filter || j.status === filter; });
    shown.sort(function (a, b) {
      var d = order.indexOf(a.status) - order.indexOf(b.status);
      return d !== 0 ? d : (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
    });
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
    document.title = "jobherald: " + jobs.length + " jobs";
  }
  function refresh() {
    fetch("/api/jobs", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(render)
      .catch(function () { /* the daemon restarting: the next round tries again */ })
      .then(function () { setTimeout(refresh, 2000); });
  }
  setTimeout(refresh, 2000);
})();
