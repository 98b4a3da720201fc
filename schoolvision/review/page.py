"""``review.html``: one self-contained offline page to decide a review queue, one item at a time.

Every image is inlined as a data URI and the script is plain JavaScript, so the page works from
``file://`` with no server and no network. Keys: ``s`` / ``1`` school, ``n`` / ``2`` not a school,
``u`` / ``3`` unsure, ``b`` / Backspace back (arrows move without deciding). Decisions are kept in the
browser's ``localStorage`` under ``schoolvision-review:<queue id>``, written at every key press, so a
reload or a crash loses none. "Export" downloads ``decisions.geojson``: one Point per decided item
with ``id``, ``queue_id``, ``decision`` (``school``, ``not_school``, ``unsure``) and ``timestamp``
(ISO 8601, UTC), read back by ``schoolvision review import``.
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

_FIELDS = ("id", "position", "source", "registry_status", "probability", "chip_probability", "candidate_rank",
           "scene", "name", "lon", "lat", "x", "y", "crs")

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; background: #1e1e1e; color: #eee; }
header { display: flex; gap: 1.5em; align-items: center; padding: 0.6em 1em; background: #2b2b2b; }
header h1 { font-size: 1.1em; margin: 0; }
#progress { font-variant-numeric: tabular-nums; }
main { padding: 1em; }
.views { display: flex; gap: 1em; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 0.85em; color: #bbb; margin-top: 0.2em; }
.big { width: 384px; height: 384px; image-rendering: pixelated; border: 1px solid #555; }
.context { width: 256px; height: 256px; border: 1px solid #555; }
#info { margin-top: 0.8em; font-size: 0.95em; line-height: 1.5; }
#decision { font-weight: bold; }
.school { color: #4caf50; } .not_school { color: #ef5350; } .unsure { color: #ffb300; }
.keys { margin-top: 0.8em; color: #bbb; font-size: 0.9em; }
kbd { border: 1px solid #777; border-radius: 3px; padding: 0 0.3em; background: #333; }
button { font-size: 1em; padding: 0.3em 0.8em; margin-right: 0.4em; }
#done { display: none; font-size: 1.2em; color: #4caf50; margin: 0.5em 0; }
</style>
</head>
<body>
<header>
  <h1>__TITLE__</h1>
  <span id="progress"></span>
  <span>
    <button id="b-school" title="s or 1">School</button>
    <button id="b-not" title="n or 2">Not a school</button>
    <button id="b-unsure" title="u or 3">Unsure</button>
    <button id="b-back" title="b or Backspace">Back</button>
    <button id="export">Export</button>
  </span>
</header>
<main>
  <div id="done">Every item is decided: press Export to download decisions.geojson.</div>
  <div class="views">
    <figure><img id="chip" class="big" alt="chip"><figcaption>chip</figcaption></figure>
    <figure><img id="cam" class="big" alt="grad-CAM"><figcaption>grad-CAM of "school"</figcaption></figure>
    <figure><img id="context" class="context" alt="surroundings">
      <figcaption>surroundings (the chip outlined)</figcaption></figure>
  </div>
  <div id="info"></div>
  <div class="keys"><kbd>s</kbd>/<kbd>1</kbd> school &middot; <kbd>n</kbd>/<kbd>2</kbd> not a school &middot;
    <kbd>u</kbd>/<kbd>3</kbd> unsure &middot; <kbd>b</kbd>/<kbd>Backspace</kbd> back &middot;
    <kbd>&larr;</kbd>/<kbd>&rarr;</kbd> move without deciding. Decisions are kept in this browser.</div>
</main>
<script id="queue-data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("queue-data").textContent);
const QUEUE = DATA.queue, ITEMS = DATA.items;
const KEY = "__PREFIX__" + QUEUE.queue_id;
function load() {
  try { return JSON.parse(localStorage.getItem(KEY)) || {decisions: {}, index: null}; }
  catch (e) { return {decisions: {}, index: null}; }
}
const state = load();
function save() { localStorage.setItem(KEY, JSON.stringify(state)); }
function firstOpen() {
  const i = ITEMS.findIndex(it => !(it.id in state.decisions));
  return i < 0 ? ITEMS.length : i;
}
let index = (state.index === null || state.index === undefined) ? firstOpen() : Math.min(state.index, ITEMS.length);
const LABELS = {school: "school", not_school: "not a school", unsure: "unsure"};
const REGISTRY = {registry: "in the registry", new: "not in the registry",
                  not_seen: "in the registry, not seen by the scan"};
function show() {
  const n = ITEMS.length, decided = ITEMS.filter(it => it.id in state.decisions).length;
  document.getElementById("progress").textContent =
    "item " + Math.min(index + 1, n) + " of " + n + " \\u00b7 " + decided + " decided";
  document.getElementById("done").style.display = decided === n && n > 0 ? "block" : "none";
  const it = ITEMS[Math.min(index, n - 1)];
  if (!it) { document.getElementById("info").textContent = "The queue is empty."; return; }
  for (const k of ["chip", "cam", "context"]) document.getElementById(k).src = it[k];
  const d = state.decisions[it.id];
  const info = document.getElementById("info");
  info.innerHTML = "";
  const rows = [
    ["decision", d ? LABELS[d.decision] : "not decided yet"],
    ["P(school)", it.probability.toFixed(3) + " (threshold " + QUEUE.threshold.toFixed(3) + "; chip " +
      (it.chip_probability === null ? "?" : it.chip_probability.toFixed(3)) + ")"],
    ["kind", it.source.replace("_", " ") + (it.registry_status ? " \\u00b7 " + REGISTRY[it.registry_status] : "") +
      (it.name ? " \\u00b7 " + it.name : "")],
    ["where", it.lat.toFixed(6) + ", " + it.lon.toFixed(6) + " (scene " + it.scene + ")"],
    ["id", it.id],
  ];
  for (const [k, v] of rows) {
    const line = document.createElement("div");
    const b = document.createElement("b"); b.textContent = k + ": ";
    const s = document.createElement("span"); s.textContent = v;
    if (k === "decision") { s.id = "decision"; if (d) s.className = d.decision; }
    line.append(b, s); info.append(line);
  }
}
function decide(decision) {
  if (index >= ITEMS.length) return;
  const it = ITEMS[index];
  state.decisions[it.id] = {decision: decision, timestamp: new Date().toISOString()};
  index = Math.min(index + 1, ITEMS.length);
  state.index = index; save(); show();
}
function move(step) {
  index = Math.max(0, Math.min(ITEMS.length, index + step));
  state.index = index; save(); show();
}
function exportDecisions() {
  const features = ITEMS.filter(it => it.id in state.decisions).map(it => ({
    type: "Feature",
    geometry: {type: "Point", coordinates: [it.lon, it.lat]},
    properties: {id: it.id, queue_id: QUEUE.queue_id, decision: state.decisions[it.id].decision,
                 timestamp: state.decisions[it.id].timestamp, lon: it.lon, lat: it.lat, x: it.x, y: it.y,
                 crs: it.crs, source: it.source, probability: it.probability},
  }));
  const text = JSON.stringify({type: "FeatureCollection", queue_id: QUEUE.queue_id, features: features}, null, 1);
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type: "application/geo+json"}));
  a.download = "__EXPORT__";
  document.body.append(a); a.click(); a.remove();
}
document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key.toLowerCase();
  if (k === "s" || k === "1") decide("school");
  else if (k === "n" || k === "2") decide("not_school");
  else if (k === "u" || k === "3") decide("unsure");
  else if (k === "b" || e.key === "Backspace") { e.preventDefault(); move(-1); }
  else if (e.key === "ArrowLeft") move(-1);
  else if (e.key === "ArrowRight") move(1);
  else return;
  e.preventDefault();
});
document.getElementById("b-school").onclick = () => decide("school");
document.getElementById("b-not").onclick = () => decide("not_school");
document.getElementById("b-unsure").onclick = () => decide("unsure");
document.getElementById("b-back").onclick = () => move(-1);
document.getElementById("export").onclick = exportDecisions;
show();
</script>
</body>
</html>
"""


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def render_page(queue: dict, items: Sequence[dict], images: dict[tuple[str, str], bytes]) -> str:
    """The page's HTML: ``queue`` (``queue.json``), ``items`` in review order, JPEGs by (item id, kind)."""
    data = {"queue": {k: queue.get(k) for k in ("queue_id", "threshold", "order", "rule", "items")},
            "items": [{**{k: it.get(k) for k in _FIELDS},
                       **{kind: _data_uri(images[(it["id"], kind)]) for kind in ReviewFolder.IMAGE_KINDS}}
                      for it in items]}
    text = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # never closes the script element
    title = html.escape(f"schoolvision review: {len(items)} items, {queue.get('order')} order")
    return (_TEMPLATE.replace("__TITLE__", title).replace("__PREFIX__", STORAGE_PREFIX)
            .replace("__EXPORT__", EXPORT_NAME).replace("__DATA__", text))


def write_page(folder: ReviewFolder, queue: dict, items: Sequence[dict]) -> Path:
    """Write ``review.html`` of ``folder`` (its images already written) atomically."""
    images = {(it["id"], kind): folder.read_image(it["id"], kind) for it in items for kind in ReviewFolder.IMAGE_KINDS}
    return write_text(folder.page_path, render_page(queue, items, images))
