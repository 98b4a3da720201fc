"""``review.html``: one self-contained offline page to decide a review queue, one item at a time.

Every image is inlined as a data URI and the script is plain JavaScript, so the page works from
``file://`` with no server and no network. Keys (:data:`KEYS`): ``s`` / ``1`` school, ``n`` / ``2``
not a school, ``u`` / ``3`` unsure, ``b`` / Backspace / left arrow back, right arrow on without
deciding, ``f`` the first undecided item, ``k`` the next kind (all, candidates, near misses, registry
schools not seen; also a menu), ``e`` Export. After the last item comes a summary (counts by
decision, Export, how to go back) where every key still answers. Each number is labelled: the P(school)
of the place (the scan's highest window probability there) and the P(school) of the chip shown.
Decisions are kept in the browser's ``localStorage`` under ``schoolvision-review:<queue id>``, written
at every key press, so a reload or a crash loses none. "Export" downloads ``decisions.geojson``: one
Point per decided item with ``id``, ``queue_id``, ``decision`` (``school``, ``not_school``,
``unsure``), ``timestamp`` (ISO 8601, UTC) and ``merged_ids`` (the items at the same place that the
decision covers), read back by ``schoolvision review import`` and ``review retrain``.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from schoolvision.io.atomic import write_text
from schoolvision.io.folders import ReviewFolder

DECISIONS = ("school", "not_school", "unsure")
"""What a mapper can say about an item (the ``decision`` of ``decisions.geojson``)."""

STORAGE_PREFIX = "schoolvision-review:"
"""``localStorage`` key prefix; the queue id follows."""

EXPORT_NAME = "decisions.geojson"

_FIELDS = ("id", "position", "source", "registry_status", "registry_id", "probability", "chip_probability",
           "candidate_rank", "scene", "name", "lon", "lat", "x", "y", "crs", "merged_ids", "merged", "nearest_new_m")

KEYS = {"s / 1": "school", "n / 2": "not a school", "u / 3": "unsure", "b / Backspace / \u2190": "back",
        "\u2192": "next without deciding", "f": "first undecided item", "k": "next kind filter",
        "e": "Export decisions.geojson"}
"""The page's keys (shown on the page and in the README); they work on the end summary too."""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; background: #1e1e1e; color: #eee; }
header { display: flex; gap: 1.2em; align-items: center; flex-wrap: wrap; padding: 0.6em 1em; background: #2b2b2b; }
header h1 { font-size: 1.1em; margin: 0; }
#progress { font-variant-numeric: tabular-nums; }
#undecided { font-weight: bold; color: #ffb300; }
main { padding: 1em; }
.views { display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 0.85em; color: #bbb; margin-top: 0.2em; }
.big { width: 384px; height: 384px; image-rendering: pixelated; border: 1px solid #555; }
.context { width: 256px; height: 256px; border: 1px solid #555; }
#info { margin-top: 0.8em; font-size: 0.95em; line-height: 1.5; }
#decision { font-weight: bold; }
.hint { color: #ffb300; }
.school { color: #4caf50; } .not_school { color: #ef5350; } .unsure { color: #ffb300; }
.keys { margin-top: 0.8em; color: #bbb; font-size: 0.9em; }
kbd { border: 1px solid #777; border-radius: 3px; padding: 0 0.3em; background: #333; }
button, select { font-size: 1em; padding: 0.3em 0.8em; margin-right: 0.4em; }
#summary { display: none; font-size: 1.05em; line-height: 1.6; }
#summary table { border-collapse: collapse; margin: 0.5em 0; }
#summary td { padding: 0.1em 1em 0.1em 0; font-variant-numeric: tabular-nums; }
#note { color: #ffb300; min-height: 1.4em; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <span id="progress"></span>
  <span id="undecided"></span>
  <span>
    <button id="b-school" title="s or 1">School</button>
    <button id="b-not" title="n or 2">Not a school</button>
    <button id="b-unsure" title="u or 3">Unsure</button>
    <button id="b-back" title="b, Backspace or left arrow">Back</button>
    <button id="export" title="e">Export</button>
    <label>kind <select id="kind" title="k"></select></label>
  </span>
</header>
<main>
  <div id="note"></div>
  <div id="item">
    <div class="views">
      <figure><img id="chip" class="big" alt="chip"><figcaption>chip centred on the place</figcaption></figure>
      <figure><img id="cam" class="big" alt="grad-CAM">
        <figcaption>grad-CAM of "school" on the chip</figcaption></figure>
      <figure><img id="context" class="context" alt="surroundings">
        <figcaption>surroundings (the chip outlined)</figcaption></figure>
    </div>
    <div id="info"></div>
  </div>
  <div id="summary"></div>
  <div class="keys">__KEYS__. Decisions are kept in this browser until you Export.</div>
</main>
<script id="queue-data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("queue-data").textContent);
const QUEUE = DATA.queue, ITEMS = DATA.items;
const KEY = "__PREFIX__" + QUEUE.queue_id;
const KINDS = {all: "all kinds", candidate: "candidates", below_threshold: "near misses",
               registry: "registry, not seen"};
const LABELS = {school: "school", not_school: "not a school", unsure: "unsure"};
const REGISTRY = {registry: "in the registry", new: "not in the registry",
                  not_seen: "in the registry, not seen by the scan"};
function load() {
  try { return JSON.parse(localStorage.getItem(KEY)) || {decisions: {}}; }
  catch (e) { return {decisions: {}}; }
}
const state = load();
state.decisions = state.decisions || {};
let kind = KINDS[state.kind] ? state.kind : "all";
let items = [], pos = 0;
function save() {
  state.kind = kind; state.current = pos < items.length ? items[pos].id : "end";
  localStorage.setItem(KEY, JSON.stringify(state));
}
function firstOpen() {
  const i = items.findIndex(it => !(it.id in state.decisions));
  return i < 0 ? items.length : i;
}
function select(k) {
  kind = k; items = ITEMS.filter(it => kind === "all" || it.source === kind);
  const i = items.findIndex(it => it.id === state.current);
  pos = state.current === "end" ? items.length : (i >= 0 ? i : firstOpen());
  document.getElementById("kind").value = kind;
}
function note(text) { document.getElementById("note").textContent = text; }
function fmt(p) { return p === null || p === undefined ? "?" : Number(p).toFixed(3); }
function rows(it) {
  const d = state.decisions[it.id];
  const out = [
    ["decision", d ? LABELS[d.decision] : "not decided yet"],
    ["P(school) of the place", fmt(it.probability) + ": the scan's highest window probability here " +
      "(the scan's threshold is " + fmt(QUEUE.threshold) + ")"],
    ["P(school) of the chip", fmt(it.chip_probability) + ": the model on the chip shown, centred on the place"],
    ["kind", it.source.replace("_", " ") + (it.registry_status ? " \u00b7 " + REGISTRY[it.registry_status] : "") +
      (it.name ? " \u00b7 " + it.name : "") + (it.registry_id ? " (registry id " + it.registry_id + ")" : "")],
  ];
  if (it.source === "registry" && it.nearest_new_m !== null && it.nearest_new_m !== undefined &&
      it.nearest_new_m <= QUEUE.displaced_search_m)
    out.push(["hint", "possibly misplaced: new candidate " + Math.round(it.nearest_new_m) + " m away"]);
  if (it.merged && it.merged.length)
    out.push(["also here", it.merged.join("; ") + " (one decision covers them all)"]);
  out.push(["where", it.lat.toFixed(6) + ", " + it.lon.toFixed(6) + " (scene " + it.scene + ")"], ["id", it.id]);
  return out;
}
function counts() {
  const c = {school: 0, not_school: 0, unsure: 0, undecided: 0};
  for (const it of items) c[it.id in state.decisions ? state.decisions[it.id].decision : "undecided"] += 1;
  return c;
}
function show() {
  const c = counts(), n = items.length, end = pos >= n;
  const all = ITEMS.filter(it => !(it.id in state.decisions)).length;
  document.getElementById("progress").textContent =
    (end ? "end of the queue" : "item " + (pos + 1) + " of " + n) + " \u00b7 " + (n - c.undecided) + " decided";
  document.getElementById("undecided").textContent = c.undecided + " undecided" +
    (kind === "all" ? "" : " (all kinds: " + all + ")");
  document.getElementById("item").style.display = end ? "none" : "block";
  document.getElementById("summary").style.display = end ? "block" : "none";
  if (end) {
    const summary = document.getElementById("summary");
    summary.innerHTML = "";
    const h = document.createElement("h2");
    h.textContent = n ? "End of the queue (" + KINDS[kind] + ")" : "The queue is empty (" + KINDS[kind] + ")";
    const table = document.createElement("table");
    for (const [k, v] of [["school", c.school], ["not a school", c.not_school], ["unsure", c.unsure],
                          ["undecided", c.undecided]]) {
      const tr = table.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = v;
    }
    const p = document.createElement("p");
    p.id = "summary-help";
    p.textContent = "Export (e) downloads decisions.geojson for schoolvision review retrain. " +
      "b, Backspace or \u2190 goes back to the last item" + (c.undecided ? "; f goes to the first undecided one" : "") +
      "; k or the kind menu shows another kind.";
    const b = document.createElement("button");
    b.textContent = "Export"; b.id = "export-end"; b.onclick = exportDecisions;
    summary.append(h, table, b, p);
    return;
  }
  const it = items[pos];
  for (const k of ["chip", "cam", "context"]) document.getElementById(k).src = it[k];
  const info = document.getElementById("info");
  info.innerHTML = "";
  const d = state.decisions[it.id];
  for (const [k, v] of rows(it)) {
    const line = document.createElement("div");
    const b = document.createElement("b"); b.textContent = k + ": ";
    const s = document.createElement("span"); s.textContent = v;
    if (k === "decision") { s.id = "decision"; if (d) s.className = d.decision; }
    if (k === "hint") s.className = "hint";
    line.append(b, s); info.append(line);
  }
}
function decide(decision) {
  if (pos >= items.length) { note("End of the queue: nothing to decide here. b goes back, e exports."); return; }
  state.decisions[items[pos].id] = {decision: decision, timestamp: new Date().toISOString()};
  note(""); pos += 1; save(); show();
}
function move(step) { note(""); pos = Math.max(0, Math.min(items.length, pos + step)); save(); show(); }
function firstUndecided() { note(""); pos = firstOpen(); save(); show(); }
function nextKind() {
  const ks = Object.keys(KINDS);
  select(ks[(ks.indexOf(kind) + 1) % ks.length]); pos = firstOpen(); save(); show();
}
function exportDecisions() {
  const features = ITEMS.filter(it => it.id in state.decisions).map(it => ({
    type: "Feature",
    geometry: {type: "Point", coordinates: [it.lon, it.lat]},
    properties: {id: it.id, queue_id: QUEUE.queue_id, decision: state.decisions[it.id].decision,
                 timestamp: state.decisions[it.id].timestamp, merged_ids: it.merged_ids || [], lon: it.lon,
                 lat: it.lat, x: it.x, y: it.y, crs: it.crs, source: it.source, probability: it.probability},
  }));
  const text = JSON.stringify({type: "FeatureCollection", queue_id: QUEUE.queue_id, features: features}, null, 1);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type: "application/geo+json"}));
  a.download = "__EXPORT__";
  document.body.append(a); a.click(); a.remove();
  note("Exported " + features.length + " decision(s) to __EXPORT__.");
}
document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === "SELECT") return;
  const k = e.key.toLowerCase();
  if (k === "s" || k === "1") decide("school");
  else if (k === "n" || k === "2") decide("not_school");
  else if (k === "u" || k === "3") decide("unsure");
  else if (k === "b" || e.key === "Backspace" || e.key === "ArrowLeft") move(-1);
  else if (e.key === "ArrowRight") move(1);
  else if (k === "f") firstUndecided();
  else if (k === "k") nextKind();
  else if (k === "e") exportDecisions();
  else return;
  e.preventDefault();
});
const menu = document.getElementById("kind");
for (const [k, label] of Object.entries(KINDS)) {
  const n = ITEMS.filter(it => k === "all" || it.source === k).length;
  const o = document.createElement("option"); o.value = k; o.textContent = label + " (" + n + ")"; menu.append(o);
}
menu.onchange = () => { select(menu.value); pos = firstOpen(); save(); show(); menu.blur(); };
document.getElementById("b-school").onclick = () => decide("school");
document.getElementById("b-not").onclick = () => decide("not_school");
document.getElementById("b-unsure").onclick = () => decide("unsure");
document.getElementById("b-back").onclick = () => move(-1);
document.getElementById("export").onclick = exportDecisions;
select(kind);
show();
</script>
</body>
</html>
"""


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def render_page(queue: dict, items: Sequence[dict], images: dict[tuple[str, str], bytes]) -> str:
    """The page's HTML: ``queue`` (``queue.json``), ``items`` in review order, JPEGs by (item id, kind)."""
    data = {"queue": {k: queue.get(k) for k in ("queue_id", "threshold", "order", "rule", "items",
                                                "displaced_search_m")},
            "items": [{**{k: it.get(k) for k in _FIELDS},
                       **{kind: _data_uri(images[(it["id"], kind)]) for kind in ReviewFolder.IMAGE_KINDS}}
                      for it in items]}
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # never closes the script element
    title = html.escape(f"schoolvision review: {len(items)} items, {queue.get('order')} order")
    keys = " &middot; ".join(" / ".join(f"<kbd>{html.escape(k)}</kbd>" for k in key.split(" / ")) + " " + html.escape(v)
                             for key, v in KEYS.items())
    return (_TEMPLATE.replace("__TITLE__", title).replace("__PREFIX__", STORAGE_PREFIX)
            .replace("__EXPORT__", EXPORT_NAME).replace("__KEYS__", keys).replace("__DATA__", text))


def write_page(folder: ReviewFolder, queue: dict, items: Sequence[dict]) -> Path:
    """Write ``review.html`` of ``folder`` (its images already written) atomically."""
    images = {(it["id"], kind): folder.read_image(it["id"], kind) for it in items for kind in ReviewFolder.IMAGE_KINDS}
    return write_text(folder.page_path, render_page(queue, items, images))
