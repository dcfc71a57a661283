// The officer page: one tile per docked camera, redrawn from the station's live stream.
// All words arrive translated from the server; they are written with textContent only.
"use strict";
(function () {
  const body = document.body;
  const list = document.getElementById("docks");
  const empty = document.getElementById("empty");
  const summary = document.getElementById("summary");
  const connection = document.getElementById("connection");
  const tileTemplate = document.getElementById("tile-template");
  const clipTemplate = document.getElementById("clip-template");
  const dialog = document.getElementById("detail");
  const tiles = new Map();
  let current = null;
  let openKey = null;

  function text(root, selector, value) {
    const el = root.querySelector(selector);
    el.textContent = value || "";
    el.hidden = !value;
  }

  function setProgress(bar, value, max, full) {
    bar.max = max;
    bar.value = full ? max : Math.min(value, max);
  }

  // Columns and rows that fit every tile on the screen, tiles wider than tall.
  function layout(count) {
    const width = list.clientWidth || window.innerWidth;
    const height = list.clientHeight || window.innerHeight;
    let best = { cols: 1, rows: Math.max(count, 1), score: -1 };
    for (let cols = 1; cols <= Math.min(Math.max(count, 1), 8); cols++) {
      const rows = Math.ceil(Math.max(count, 1) / cols);
      const w = width / cols;
      const h = height / rows;
      const score = Math.min(w / 1.5, h);  // the size a tile of ratio 1.5 can have
      if (score > best.score) best = { cols: cols, rows: rows, score: score };
    }
    list.dataset.count = String(count);
    list.dataset.cols = String(best.cols);
    list.dataset.rows = String(Math.min(best.rows, 8));
  }

  function makeTile(key) {
    const node = tileTemplate.content.firstElementChild.cloneNode(true);
    node.dataset.key = key;
    node.querySelector(".tile").addEventListener("click", function () { openDetail(key); });
    return node;
  }

  function fillTile(node, t) {
    node.dataset.state = t.state;
    node.dataset.safe = t.safe ? "true" : "false";
    text(node, ".port", t.port);
    text(node, ".battery", t.battery);
    text(node, ".name", t.officer);
    text(node, ".number", t.number);
    text(node, ".serial", t.serial);
    text(node, ".state-text", t.state_text);
    text(node, ".advice", t.advice);
    text(node, ".advice-short", t.advice_short);
    text(node, ".detail-line", t.detail);
    text(node, ".bar-text", t.progress.text);
    const bar = node.querySelector(".bar");
    bar.setAttribute("aria-label", t.progress.label);
    setProgress(bar, t.progress.value, t.progress.max, t.progress.full);
  }

  function render(data) {
    current = data;
    summary.textContent = data.summary;
    empty.hidden = data.count > 0;
    layout(data.count);
    const seen = new Set();
    data.tiles.forEach(function (t, index) {
      seen.add(t.key);
      let node = tiles.get(t.key);
      if (!node) {
        node = makeTile(t.key);
        tiles.set(t.key, node);
      }
      if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
      fillTile(node, t);
    });
    tiles.forEach(function (node, key) {
      if (!seen.has(key)) {
        node.remove();
        tiles.delete(key);
      }
    });
    if (openKey !== null) fillDetail();
  }

  function openDetail(key) {
    openKey = key;
    fillDetail();
    if (!dialog.open) dialog.showModal();
  }

  function fillDetail() {
    const t = current && current.tiles.find(function (x) { return x.key === openKey; });
    if (!t) {
      if (dialog.open) dialog.close();
      return;
    }
    dialog.dataset.state = t.state;
    document.getElementById("detail-title").textContent =
      [t.port, t.officer, t.number].filter(Boolean).join(" · ");
    document.getElementById("detail-state").textContent = t.state_text;
    document.getElementById("detail-advice").textContent = t.advice;
    const errors = document.getElementById("detail-errors");
    errors.replaceChildren();
    t.errors.forEach(function (e) {
      const li = document.createElement("li");
      li.textContent = e;
      errors.appendChild(li);
    });
    const clips = document.getElementById("detail-clips");
    const rows = t.clips.map(function (c) {
      const li = clipTemplate.content.firstElementChild.cloneNode(true);
      li.dataset.step = c.step;
      li.dataset.clip = c.id || "";
      li.querySelector(".clip-name").textContent = c.name;
      li.querySelector(".clip-step").textContent = c.step_text;
      li.querySelector(".clip-text").textContent = c.text;
      const bar = li.querySelector(".clip-bar");
      bar.setAttribute("aria-label", c.name);
      setProgress(bar, c.value, c.max, false);
      return li;
    });
    clips.replaceChildren.apply(clips, rows);
    // The officer's script (officer.js) offers this camera's recordings to a signed-in officer.
    document.dispatchEvent(new CustomEvent("dock-detail", {
      detail: { camera: t.camera, officer: t.officer_id, clips: t.clips.length } }));
  }

  document.getElementById("detail-close").addEventListener("click", function () {
    dialog.close();
  });
  dialog.addEventListener("close", function () { openKey = null; });
  window.addEventListener("resize", function () { if (current) layout(current.count); });

  // One stream per page; the browser reconnects by itself after the retry the server sets.
  const events = new EventSource(body.dataset.events);
  events.addEventListener("kiosk", function (e) {
    connection.hidden = true;
    render(JSON.parse(e.data));
  });
  events.addEventListener("error", function () { connection.hidden = false; });
})();
