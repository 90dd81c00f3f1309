// ftqueue dashboard: live updates without reloading. The page was rendered on the server;
// this script polls the page's JSON API (body[data-live]) and refreshes what the markup
// marks: [data-field] text, table[data-rows] bodies, [data-links] lists, [data-show-if]
// visibility, svg[data-chart] charts. No library, no build step.
"use strict";

function pick(data, path) {
  return path.split(".").reduce(function (v, k) {
    if (v === null || v === undefined) return undefined;
    if (Array.isArray(v) && /^-?\d+$/.test(k)) {
      var i = parseInt(k, 10);
      return v[i < 0 ? v.length + i : i];
    }
    return v[k];
  }, data);
}

function iso(seconds) {
  if (seconds === null || seconds === undefined || seconds === "") return "";
  var d = new Date(seconds * 1000), pad = function (n, w) { return String(n).padStart(w || 2, "0"); };
  return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
    pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." +
    pad(d.getMilliseconds(), 3);
}

function bytes(n) {
  if (!n) return "";
  var units = ["B", "KiB", "MiB", "GiB"], i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
}

function text(value) {
  if (value === null || value === undefined) return "";
  if (Array.isArray(value)) return value.join(", ");
  if (typeof value === "object") {
    var parts = Object.keys(value).sort().map(function (k) { return k + "=" + value[k]; });
    return parts.length ? parts.join(", ") : "none";
  }
  return String(value);
}

function cell(td, row, th) {
  var key = th.dataset.col, kind = th.dataset.kind, link = th.dataset.link;
  var value = row[key];
  td.className = key + (key === "state" ? " state-" + value : "");
  if (kind === "output") {
    if (value) {
      var details = document.createElement("details"), summary = document.createElement("summary");
      var pre = document.createElement("pre");
      var n = value.replace(/\n$/, "").split("\n").length;
      summary.textContent = n + (n === 1 ? " line" : " lines");
      pre.textContent = value;
      details.append(summary, pre);
      td.append(details);
    }
    return;
  }
  var shown = kind === "time" ? iso(value) : kind === "bytes" ? bytes(value) : text(value);
  if (link && value !== null && value !== undefined && value !== "") {
    var a = document.createElement("a");
    a.href = link.replace("{" + key + "}", encodeURIComponent(value));
    a.textContent = shown;
    td.append(a);
  } else {
    td.textContent = shown;
  }
}

function fillTable(table, rows) {
  if (!Array.isArray(rows)) return;
  var heads = Array.prototype.slice.call(table.querySelectorAll("thead th"));
  var body = document.createElement("tbody");
  rows.forEach(function (row) {
    var tr = document.createElement("tr");
    heads.forEach(function (th) {
      var td = document.createElement("td");
      cell(td, row, th);
      tr.append(td);
    });
    body.append(tr);
  });
  if (!rows.length) {
    var tr = document.createElement("tr"), td = document.createElement("td");
    tr.className = "empty";
    td.colSpan = heads.length;
    td.textContent = table.dataset.empty || "none";
    tr.append(td);
    body.append(tr);
  }
  // Keep open output panels open across refreshes.
  var open = Array.prototype.map.call(table.querySelectorAll("tbody details"), function (d) { return d.open; });
  table.replaceChild(body, table.tBodies[0]);
  Array.prototype.forEach.call(body.querySelectorAll("details"), function (d, i) { d.open = !!open[i]; });
}

function fillLinks(span, ids) {
  if (!Array.isArray(ids)) return;
  span.textContent = "";
  ids.forEach(function (id) {
    var a = document.createElement("a");
    a.href = "/tasks/" + encodeURIComponent(id);
    a.textContent = id;
    span.append(a, " ");
  });
  if (!ids.length) span.textContent = "none";
}

var SERIES = [["finished", "#2b8a3e"], ["failed", "#c92a2a"], ["retried", "#e67700"]];

function drawChart(svg, t) {
  if (!t || !t.finished) return;
  var ns = "http://www.w3.org/2000/svg", w = 720, h = 180, pad = 20;
  var n = t.finished.length, max = 1;
  SERIES.forEach(function (s) { t[s[0]].forEach(function (v) { if (v > max) max = v; }); });
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  var axis = document.createElementNS(ns, "line");
  axis.setAttribute("x1", 0); axis.setAttribute("x2", w);
  axis.setAttribute("y1", h - pad); axis.setAttribute("y2", h - pad);
  axis.setAttribute("class", "axis");
  svg.append(axis);
  var label = document.createElementNS(ns, "text");
  label.setAttribute("x", 4); label.setAttribute("y", 12); label.setAttribute("class", "label");
  label.textContent = "max " + max + "/min";
  svg.append(label);
  var ago = document.createElementNS(ns, "text");
  ago.setAttribute("x", 4); ago.setAttribute("y", h - 4); ago.setAttribute("class", "label");
  ago.textContent = "-" + n + " min";
  svg.append(ago);
  var now = document.createElementNS(ns, "text");
  now.setAttribute("x", w - 30); now.setAttribute("y", h - 4); now.setAttribute("class", "label");
  now.textContent = "now";
  svg.append(now);
  var step = w / Math.max(n - 1, 1);
  SERIES.forEach(function (s) {
    var points = t[s[0]].map(function (v, i) {
      return (i * step).toFixed(1) + "," + (h - pad - (v / max) * (h - 2 * pad - 10)).toFixed(1);
    });
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", s[1]);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("class", "series-" + s[0]);
    svg.append(line);
  });
}

var STATE_COLOURS = {FINISHED: "#2b8a3e", FAILED: "#c92a2a", RUNNING: "#1864ab",
  SUBMITTED_TO_WORKER: "#1864ab"};

// Every attempt as a bar from its start to its end (or to now, while it runs), on one
// time axis, labelled with its node and error type.
function drawTimeline(svg, attempts) {
  if (!Array.isArray(attempts)) return;
  // Drawn at the element's own width, so labels keep their size.
  var ns = "http://www.w3.org/2000/svg", w = svg.clientWidth || 720, row = 26;
  var now = Date.now() / 1000;
  var spans = attempts.filter(function (a) { return a.start_time; }).map(function (a) {
    return {a: a, start: a.start_time, end: a.end_time || now};
  });
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  svg.setAttribute("viewBox", "0 0 " + w + " " + Math.max(row, spans.length * row));
  svg.style.height = Math.max(row, spans.length * row) + "px";
  if (!spans.length) return;
  var t0 = Math.min.apply(null, spans.map(function (s) { return s.start; }));
  var t1 = Math.max.apply(null, spans.map(function (s) { return s.end; }));
  var scale = (w - Math.min(440, w / 2)) / Math.max(t1 - t0, 0.001);   // room for labels
  spans.forEach(function (s, i) {
    var bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", ((s.start - t0) * scale).toFixed(1));
    bar.setAttribute("y", i * row + 4);
    bar.setAttribute("width", Math.max(2, (s.end - s.start) * scale).toFixed(1));
    bar.setAttribute("height", row - 8);
    bar.setAttribute("fill", STATE_COLOURS[s.a.state] || "#868e96");
    bar.setAttribute("class", "attempt-bar");
    svg.append(bar);
    var label = document.createElementNS(ns, "text");
    label.setAttribute("x", ((s.end - t0) * scale + 6).toFixed(1));
    label.setAttribute("y", i * row + row / 2 + 4);
    label.setAttribute("class", "label");
    label.textContent = "attempt " + s.a.attempt_number + " · " + (s.a.node_id || "?") +
      " · " + ((s.end - s.start).toFixed(3)) + " s" + (s.a.error_type ? " · " + s.a.error_type : "");
    svg.append(label);
  });
}

function render(data) {
  document.querySelectorAll("[data-field]").forEach(function (el) {
    var value = pick(data, el.dataset.field);
    if (value !== undefined) el.textContent = text(value);
    if (el.classList.contains("state")) el.className = "state state-" + text(value);
  });
  document.querySelectorAll("table[data-rows]").forEach(function (t) { fillTable(t, pick(data, t.dataset.rows)); });
  document.querySelectorAll("[data-links]").forEach(function (s) { fillLinks(s, pick(data, s.dataset.links)); });
  document.querySelectorAll("[data-show-if]").forEach(function (el) {
    var v = pick(data, el.dataset.showIf);
    el.hidden = !(Array.isArray(v) ? v.length : v);
  });
  document.querySelectorAll("svg[data-chart]").forEach(function (svg) { drawChart(svg, pick(data, svg.dataset.chart)); });
  document.querySelectorAll("svg[data-timeline]").forEach(function (svg) { drawTimeline(svg, pick(data, svg.dataset.timeline)); });
}

function start() {
  var initial = document.getElementById("initial");
  var first = JSON.parse(initial.textContent);
  document.querySelectorAll("svg[data-chart]").forEach(function (svg) {
    drawChart(svg, pick(first, svg.dataset.chart));
  });
  document.querySelectorAll("svg[data-timeline]").forEach(function (svg) {
    drawTimeline(svg, pick(first, svg.dataset.timeline));
  });
  var api = document.body.dataset.live, status = document.getElementById("live-status");
  if (!api) return;
  var interval = parseInt(document.body.dataset.interval, 10) || 1000;
  var busy = false;
  function poll() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(api, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (data) {
        render(data);
        status.textContent = "live";
        status.className = "";
        document.body.dataset.updated = String(Date.now());
      })
      .catch(function (e) { status.textContent = "stale (" + e.message + ")"; status.className = "stale"; })
      .then(function () { busy = false; });
  }
  setInterval(poll, interval);
}

start();
