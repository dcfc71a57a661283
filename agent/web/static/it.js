// The IT page: station health, quarantined clips, devices, certificates, from the live stream.
// All words arrive translated from the server; they are written with textContent only.
"use strict";
(function () {
  const body = document.body;
  const connection = document.getElementById("connection");
  const requeueTemplate = document.getElementById("requeue-template");

  function el(tag, className, value) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (value !== undefined && value !== null) node.textContent = String(value);
    return node;
  }

  function fillList(id, rows, make) {
    const target = document.getElementById(id);
    target.replaceChildren.apply(target, rows.map(make));
    const none = document.getElementById(id + "-empty");
    if (none) none.hidden = rows.length > 0;
  }

  function pairs(id, rows) {
    const target = document.getElementById(id);
    const nodes = [];
    rows.forEach(function (r) {
      const dt = el("dt", null, r.label || r.what);
      const dd = el("dd", "level-" + (r.level || "ok"), r.value !== undefined ? r.value
        : (r.text !== undefined ? r.text : r.count));
      nodes.push(dt, dd);
    });
    target.replaceChildren.apply(target, nodes);
  }

  function render(d) {
    pairs("health", d.health);
    pairs("backlog", d.backlog);
    pairs("certificates", d.certificates);
    fillList("docks", d.docks, function (k) {
      const tr = el("tr");
      tr.append(el("td", null, k.port), el("td", null, k.serial),
        el("td", null, [k.officer_name, k.officer_id].filter(Boolean).join(" ")),
        el("td", "state-" + k.state, k.state_text));
      return tr;
    });
    fillList("quarantined", d.quarantined, function (q) {
      const tr = el("tr");
      tr.dataset.clip = q.clip_id;
      const clip = el("td");
      clip.append(el("span", "mono", q.clip_id), el("br"), el("span", null, q.name));
      const action = el("td");
      if (q.can_requeue) {
        const form = requeueTemplate.content.firstElementChild.cloneNode(true);
        form.querySelector("input[name=clip_id]").value = q.clip_id;
        action.append(form);
      } else {
        action.append(el("span", "muted", q.why_not));
      }
      tr.append(clip, el("td", null, q.serial), el("td", null, q.reason), action);
      return tr;
    });
    const entry = function (a) {
      const li = el("li");
      li.append(el("span", "mono", a.at), el("span", "code", a.code), el("span", null, a.message));
      return li;
    };
    fillList("alerts", d.alerts, entry);
    fillList("refused", d.refused, entry);
  }

  const events = new EventSource(body.dataset.events);
  events.addEventListener("it", function (e) {
    connection.hidden = true;
    render(JSON.parse(e.data));
  });
  events.addEventListener("signed-out", function () {
    events.close();
    window.location.assign(body.dataset.signin);
  });
  events.addEventListener("error", function () {
    connection.hidden = false;
    // A refused stream (the session ended meanwhile) is not retried by the browser.
    if (events.readyState === EventSource.CLOSED) window.location.assign(body.dataset.signin);
  });
})();
