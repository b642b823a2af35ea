// The dashboard's only script: shows times in the viewer's zone and keeps live figures current
// by polling small JSON routes (every 2 s while a batch runs, less often otherwise, never while
// the page is hidden). Pages work without it; they are then only as fresh as their last load.
(function () {
  "use strict";

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      if (!el.title) el.title = el.textContent;
      el.textContent = d.toLocaleString(undefined, {
        year: "numeric", month: "short", day: "numeric",
        hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
      });
    });
  }

  function showZone() {
    var zone = "";
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
    document.querySelectorAll(".tz").forEach(function (el) { el.textContent = zone ? "(" + zone + ")" : ""; });
  }

  function signedOut() {
    if (document.getElementById("signed-out")) return;
    var p = document.createElement("p");
    p.id = "signed-out";
    p.className = "banner";
    p.setAttribute("role", "alert");
    p.append("Your session has ended. ");
    var a = document.createElement("a");
    a.href = "/ui/login";
    a.textContent = "Sign in again";
    p.append(a);
    document.body.prepend(p);
  }

  function getJson(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (r.status === 401) { signedOut(); throw new Error("signed out"); }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      });
  }

  function setText(el, text) {
    if (el && el.textContent !== String(text)) el.textContent = String(text);
  }

  function updateBatch(el, batch) {
    var c = batch.counts;
    Object.keys(c).forEach(function (k) { setText(el.querySelector('[data-count="' + k + '"]'), c[k]); });
    var bar = el.querySelector("[data-progress]");
    if (bar) {
      bar.max = Math.max(c.total, 1);
      bar.value = c.succeeded + c.failed + c.cancelled;
      setText(bar, bar.value + " of " + c.total);
    }
    var status = el.querySelector("[data-status]");
    if (status) {
      setText(status, batch.status);
      status.className = "status status-" + batch.status;
    }
    el.querySelectorAll("[data-show-when]").forEach(function (f) {
      var when = f.getAttribute("data-show-when");
      f.hidden = when === "running" ? batch.status !== "running" : !(c.failed > 0);
    });
    var finished = el.querySelector("[data-finished]");
    if (finished && batch.finishedAt && !finished.querySelector("time")) {
      var t = document.createElement("time");
      t.setAttribute("datetime", batch.finishedAt);
      t.textContent = batch.finishedAt;
      finished.replaceChildren(t);
      localTimes(finished);
    }
    var failures = el.querySelector("[data-failures]");
    if (failures && String(c.failed) !== failures.getAttribute("data-failed")) {
      failures.setAttribute("data-failed", String(c.failed));
      fetch("/ui/batches/" + batch.batchId + "/failures", { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(new Error("HTTP " + r.status)); })
        .then(function (html) {
          // Server-rendered, escaped HTML of this origin.
          failures.innerHTML = html;
          localTimes(failures);
        })
        .catch(function () { failures.setAttribute("data-failed", ""); });
    }
  }

  function pollBatches() {
    var els = Array.prototype.slice.call(document.querySelectorAll("[data-live-batch]"));
    if (els.length === 0) return;
    var running = true;
    function tick() {
      if (document.hidden) { setTimeout(tick, 1000); return; }
      var ids = els.map(function (el) { return el.getAttribute("data-live-batch"); }).slice(0, 100);
      getJson("/ui/live/batches?ids=" + encodeURIComponent(ids.join(",")))
        .then(function (body) {
          running = false;
          body.batches.forEach(function (b) {
            els.filter(function (el) { return el.getAttribute("data-live-batch") === b.batchId; })
              .forEach(function (el) { updateBatch(el, b); });
            if (b.status === "running") running = true;
          });
          setTimeout(tick, running ? 2000 : 10000);
        })
        .catch(function (e) { if (e.message !== "signed out") setTimeout(tick, 10000); });
    }
    setTimeout(tick, 1000);
  }

  function pollOverview() {
    var root = document.querySelector("[data-live-overview]");
    if (!root) return;
    function tick() {
      if (document.hidden) { setTimeout(tick, 1000); return; }
      getJson("/ui/live/overview")
        .then(function (body) {
          Object.keys(body.figures).forEach(function (k) {
            setText(root.querySelector('[data-figure="' + k + '"]'), body.figures[k]);
          });
          setTimeout(tick, 5000);
        })
        .catch(function (e) { if (e.message !== "signed out") setTimeout(tick, 15000); });
    }
    setTimeout(tick, 5000);
  }

  function start() {
    localTimes(document);
    showZone();
    pollBatches();
    pollOverview();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
