// The officer at the station screen: sign in with the police ID card (a USB reader types
// its number and Enter) or on the keypad, then tag recordings with a case number and mark
// them important.  Words come from the page (rendered from the catalogs) or from the
// station's answers, and are written with textContent only.  The station decides and
// records everything; this script only asks.  The only pictures are the thumbnails of the
// officer's own recordings (a small JPEG each, never the recording itself).
"use strict";
(function () {
  const slot = document.getElementById("officer-slot");
  if (!slot || slot.hidden || !document.getElementById("card-form")) return;
  const words = slot.dataset;
  const $ = function (id) { return document.getElementById(id); };
  const cardForm = $("card-form");
  const cardInput = $("card-input");
  const onPart = $("officer-on");
  const notice = $("officer-notice");
  const countdown = $("officer-countdown");
  const keypad = $("keypad");
  const mine = $("mine");
  const editor = $("case-editor");
  const detail = $("detail");
  const detailMine = $("detail-mine");

  // A card reader types a burst: every key within GAP_MS of the one before, then Enter.
  const GAP_MS = 80;
  const MIN_CARD = 4;
  const PING_EVERY_MS = 10000;
  const COUNTDOWN_FROM_S = 20;

  let officer = null;  // the station's answer while signed in: officer, csrf, timeout_s
  let deadline = 0;
  let lastContact = 0;
  let filter = null;  // the camera whose recordings the list shows, or null: all
  let list = null;
  let editing = null;  // the recording the case editor is for
  let dockCamera = null;
  // One <img> per recording and place, kept while the officer is signed in: lists are
  // redrawn often (the tile's on every live update) and a thumbnail is not cached
  // (Cache-Control: no-store), so the same element moves to the new row.
  const pictures = { mine: new Map(), detail: new Map() };
  let pictureKey = "";  // per sign-in: no officer is shown an image loaded for another
  // Rows of a tile whose recording is sealed (its thumbnail was made before it was).
  const SEALED = new Set(["sealed", "uploading", "uploaded", "acknowledged", "released",
                          "upload_refused"]);

  // --- talking to the station -------------------------------------------------------------

  function withLang(path) {
    return path + (path.indexOf("?") < 0 ? "?" : "&") + "lang=" + encodeURIComponent(words.lang);
  }

  async function call(method, path, fields) {
    const options = { method: method, credentials: "same-origin" };
    if (fields) options.body = new URLSearchParams(fields);
    let response;
    try {
      response = await fetch(withLang(path), options);
    } catch (e) {
      return { status: 0, data: { error: words.offline } };
    }
    let data = {};
    try { data = await response.json(); } catch (e) { data = { error: words.offline }; }
    if (response.status !== 401 && path.indexOf("/officer/session") !== 0) contact();
    return { status: response.status, data: data };
  }

  function contact() {
    lastContact = Date.now();
    if (officer) deadline = lastContact + officer.timeout_s * 1000;
  }

  function show(el, text) {
    el.textContent = text || "";
    el.hidden = !text;
  }

  // A refusal stays long enough to be read, then leaves the screen to the next officer.
  let noticeTimer = 0;
  function tell(text) {
    show(notice, text);
    window.clearTimeout(noticeTimer);
    if (text) noticeTimer = window.setTimeout(function () { show(notice, ""); }, 30000);
  }

  // What the last action did, or why not, in the list's live region (always in the page).
  function status(text, error) {
    const el = $("mine-status");
    el.textContent = text || "";
    el.dataset.kind = error ? "error" : "done";
  }

  function closeDialog(d) { if (d && d.open) d.close(); }

  // --- signed in or not -------------------------------------------------------------------

  function enter(data) {
    if (!pictureKey || !officer || officer.officer.credential_id !== data.officer.credential_id) {
      forgetPictures();
      const bytes = new Uint8Array(8);
      window.crypto.getRandomValues(bytes);
      pictureKey = Array.from(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
    }
    officer = data;
    lastContact = Date.now();
    deadline = lastContact + data.remaining_s * 1000;
    tell("");
    $("officer-name").textContent = data.officer.name;
    $("officer-number").textContent = data.officer.number;
    show($("officer-role"), data.officer.role);
    $("mine-officer").textContent = [data.officer.name, data.officer.number, data.officer.role]
      .filter(Boolean).join(" ");
    cardForm.hidden = true;
    onPart.hidden = false;
    closeDialog(keypad);
    slot.dataset.state = "signed-in";
    tick();
  }

  // Nothing one officer saw stays for the next.
  function clearMine() {
    list = null;
    $("mine-clips").replaceChildren();
    $("mine-title").textContent = "";
    status("", false);
    $("mine-empty").hidden = true;
  }  // (the case editor starts empty whenever it opens)

  function leave(message) {
    officer = null;
    forgetPictures();
    clearMine();
    closeDialog(editor);
    closeDialog(mine);
    closeDialog(keypad);
    onPart.hidden = true;
    cardForm.hidden = false;
    detailMine.hidden = true;
    slot.dataset.state = "signed-out";
    show(countdown, "");
    show($("mine-countdown"), "");
    tell(message);
    focusCard();
  }

  function focusCard() {
    if (!officer && !document.querySelector("dialog[open]")) cardInput.focus({ preventScroll: true });
  }

  async function signIn(card, number) {
    const fields = { csrf_token: words.csrf, card: card };
    if (number) fields.officer_number = number;
    const answer = await call("POST", "/officer/signin", fields);
    if (answer.status === 200 && answer.data.signed_in) {
      closeDialog(editor);  // nothing of the officer before stays on the screen
      closeDialog(mine);
      if (officer && officer.officer.credential_id !== answer.data.officer.credential_id) {
        clearMine();
      }
      enter(answer.data);
      openMine(dockCamera && detail.open ? dockCamera : null);
      return true;
    }
    if (officer && answer.data.signed_out) leave(answer.data.error);
    else tell(answer.data.error);
    if (keypad.open) show($("keypad-error"), answer.data.error);
    return false;
  }

  async function signOut() {
    if (!officer) return;
    await call("POST", "/officer/signout", { csrf_token: officer.csrf });
    leave("");
  }

  // The station signs an idle officer out by itself; the page follows, and counts down.
  // Only a tap, a key or a swipe counts as use (``active``), never the page's own checks.
  async function check(active) {
    const answer = await call("GET", "/officer/session" + (active ? "?active=1" : ""));
    if (answer.status === 200 && answer.data.signed_in) {
      officer = answer.data;
      deadline = Date.now() + answer.data.remaining_s * 1000;
      if (active) lastContact = Date.now();
      return;
    }
    if (officer) leave(answer.data.error || words.timedOut);
  }

  function tick() {
    if (!officer) return;
    const left = Math.ceil((deadline - Date.now()) / 1000);
    const text = left > 0 && left <= COUNTDOWN_FROM_S
      ? words.countdown.replace("%(n)s", String(left)) : "";
    show(countdown, text);
    show($("mine-countdown"), text);
    if (left <= 0) check();
  }
  window.setInterval(tick, 1000);

  function activity() {
    if (officer && Date.now() - lastContact > Math.min(PING_EVERY_MS,
                                                        officer.timeout_s * 1000 / 3)) {
      check(true);
    }
  }
  document.addEventListener("pointerdown", activity, true);

  // --- the card reader --------------------------------------------------------------------

  let burst = { text: "", last: 0, target: null, before: null };

  function editable(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA");
  }

  document.addEventListener("keydown", function (e) {
    if (e.isComposing || e.ctrlKey || e.altKey || e.metaKey) return;
    const now = performance.now();
    if (e.key.length === 1) {
      if (!burst.text || now - burst.last > GAP_MS) {
        burst = { text: "", last: now, target: e.target,
                  before: editable(e.target) ? e.target.value : null };
      }
      burst.text += e.key;
      burst.last = now;
      activity();
      return;
    }
    if (e.key !== "Enter") { activity(); return; }
    const swiped = burst.text.length >= MIN_CARD && now - burst.last <= GAP_MS * 4;
    const typedCard = e.target === cardInput;
    if (!swiped && !typedCard) return;
    e.preventDefault();
    e.stopPropagation();
    let card = typedCard ? cardInput.value : burst.text;
    if (swiped && !typedCard && burst.target && burst.before !== null) {
      burst.target.value = burst.before;  // the reader typed into a field: not its text
    }
    if (typedCard) cardInput.value = "";
    burst = { text: "", last: 0, target: null, before: null };
    card = card.trim();
    if (card) signIn(card, null);
  }, true);

  cardForm.addEventListener("submit", function (e) { e.preventDefault(); });
  document.addEventListener("click", function () { window.setTimeout(focusCard, 0); });
  document.querySelectorAll("dialog").forEach(function (d) {
    d.addEventListener("close", function () { window.setTimeout(focusCard, 0); });
  });

  // --- the keypad -------------------------------------------------------------------------

  let keypadField = $("kp-number");
  ["kp-number", "kp-card"].forEach(function (id) {
    $(id).addEventListener("focus", function () { keypadField = $(id); });
  });
  $("keypad-open").addEventListener("click", function () {
    $("kp-number").value = "";
    $("kp-card").value = "";
    show($("keypad-error"), "");
    keypad.showModal();
    keypadField = $("kp-number");
    keypadField.focus();
  });
  $("keypad-close").addEventListener("click", function () { keypad.close(); });
  keypad.querySelectorAll(".key").forEach(function (key) {
    key.addEventListener("click", function () {
      const k = key.dataset.key;
      if (k === "back") keypadField.value = keypadField.value.slice(0, -1);
      else if (k === "clear") keypadField.value = "";
      else keypadField.value += k;
    });
  });
  $("keypad-form").addEventListener("submit", function (e) {
    e.preventDefault();
    const number = $("kp-number").value.trim();
    const card = $("kp-card").value.trim();
    if (!number) { keypadField = $("kp-number"); $("kp-number").focus(); return; }
    if (!card) { keypadField = $("kp-card"); $("kp-card").focus(); return; }
    signIn(card, number);
  });

  // --- pictures of the recordings --------------------------------------------------------

  function icon(kind, alt) {
    const el = document.importNode(
      $(kind === "audio" ? "picture-audio-template" : "picture-none-template")
        .content.firstElementChild, true);
    el.setAttribute("aria-label", alt);
    return el;
  }

  // The recording's thumbnail; where it cannot be loaded, the placeholder instead.
  function thumbnail(place, id, src, alt, name) {
    let img = pictures[place].get(id);
    if (img === undefined) {
      img = document.createElement("img");
      img.className = "picture";
      img.decoding = "async";
      img.addEventListener("error", function () {
        pictures[place].set(id, null);
        if (img.isConnected) img.replaceWith(icon("none", noPicture(name)));
      });
      img.src = src + "?k=" + pictureKey;
      pictures[place].set(id, img);
    }
    if (img === null) return icon("none", noPicture(name));
    img.alt = alt;
    return img;
  }

  function noPicture(name) { return words.noPicture.replace("%(name)s", name); }

  function picture(c) {
    const p = c.picture;
    return p.kind === "image" ? thumbnail("mine", c.id, p.src, p.alt, c.name) : icon(p.kind, p.alt);
  }

  function forgetPictures() {
    pictureKey = "";
    pictures.mine.clear();
    pictures.detail.clear();
    detailPictures(false);
  }

  // A tile's recordings, for the officer who may see them: the thumbnails of those sealed
  // (the others keep the place of theirs, so the rows stay aligned).
  function detailPictures(allowed) {
    const rows = $("detail-clips");
    rows.dataset.pictures = allowed ? "true" : "false";
    rows.querySelectorAll("li.clip").forEach(function (li) {
      const slot = li.querySelector(".clip-picture");
      const id = li.dataset.clip;
      const name = li.querySelector(".clip-name").textContent;
      const shown = allowed && id && SEALED.has(li.dataset.step) ? thumbnail(
        "detail", id, "/officer/thumbnail/" + encodeURIComponent(id),
        words.pictureAlt.replace("%(name)s", name), name) : null;
      if (shown) slot.replaceChildren(shown); else slot.replaceChildren();
    });
  }

  // --- the officer's recordings -----------------------------------------------------------

  async function openMine(camera) {
    filter = camera || null;
    clearMine();  // never the rows of another list while this one loads
    if (!mine.open) mine.showModal();
    await loadMine();
    $("mine-title").focus();
  }

  async function loadMine(message) {
    const path = "/officer/clips" + (filter ? "?serial=" + encodeURIComponent(filter) : "");
    const answer = await call("GET", path);
    if (answer.status === 401) { leave(answer.data.error); return; }
    if (answer.status !== 200) { status(answer.data.error, true); return; }
    list = answer.data;
    $("mine-title").textContent = list.title;
    $("mine-all").hidden = !list.filtered;
    status(message, false);
    show($("mine-empty"), list.clips.length ? "" : list.empty);
    const rows = list.clips.map(clipRow);
    const target = $("mine-clips");
    target.replaceChildren.apply(target, rows);
  }

  function clipRow(c) {
    // Imported, not cloned: a row made in the template's own document would take its
    // picture out of this one, and the browser would load it again (it is not cached).
    const li = document.importNode($("mine-clip-template").content.firstElementChild, true);
    li.dataset.clip = c.id;
    li.dataset.important = c.important ? "true" : "false";
    li.querySelector(".mine-picture").replaceChildren(picture(c));
    li.querySelector(".mine-name").textContent = c.name;
    li.querySelector(".mine-when").textContent = c.when;
    li.querySelector(".mine-camera").textContent = c.camera;
    show(li.querySelector(".mine-officer"), c.officer);
    li.querySelector(".important").hidden = !c.important;
    const cases = li.querySelector(".case-list");
    c.cases.forEach(function (k) {
      const chip = $("case-chip-template").content.firstElementChild.cloneNode(true);
      chip.dataset.case = k.case_id;
      chip.querySelector(".case-text").textContent = k.case_id;
      const remove = chip.querySelector(".remove");
      if (k.removable) {
        remove.setAttribute("aria-label", k.remove_label);
        remove.addEventListener("click", function () { removeCase(c, k, remove); });
      } else {
        remove.remove();
      }
      cases.appendChild(chip);
    });
    li.querySelector(".mine-nocase").hidden = c.cases.length > 0;
    const add = li.querySelector(".add-case");
    add.setAttribute("aria-label", c.add_label);
    add.addEventListener("click", function () { openEditor(c); });
    const mark = li.querySelector(".mark");
    if (c.important) {
      mark.remove();
    } else {
      mark.setAttribute("aria-label", c.mark_label);
      mark.addEventListener("click", function () { act("/officer/important", c, {}); });
    }
    return li;
  }

  async function act(path, clip, fields) {
    const answer = await call("POST", path, Object.assign(
      { csrf_token: officer.csrf, clip_id: clip.id }, fields));
    if (answer.status === 401) { leave(answer.data.error); return answer; }
    if (answer.status === 200) await loadMine(answer.data.message);
    else status(answer.data.error, true);
    return answer;
  }

  // Removing a case takes two taps: the first asks, the second does it.
  function removeCase(clip, kase, button) {
    if (button.dataset.armed !== "true") {
      button.dataset.armed = "true";
      button.dataset.label = button.textContent;
      button.dataset.name = button.getAttribute("aria-label") || "";
      button.removeAttribute("aria-label");  // the name is what it says now
      button.textContent = words.confirm;
      window.setTimeout(function () {
        if (button.isConnected) {
          button.dataset.armed = "false";
          button.textContent = button.dataset.label;
          if (button.dataset.name) button.setAttribute("aria-label", button.dataset.name);
        }
      }, 5000);
      return;
    }
    act("/officer/untag", clip, { case_id: kase.case_id });
  }

  $("mine-open").addEventListener("click", function () { openMine(null); });
  $("mine-all").addEventListener("click", function () { openMine(null); });
  $("mine-close").addEventListener("click", function () { mine.close(); });
  $("signout").addEventListener("click", signOut);
  $("mine-signout").addEventListener("click", signOut);

  // A signed-in officer may act on the recordings of the camera whose tile they opened.
  document.addEventListener("dock-detail", function (e) {
    dockCamera = e.detail.camera || null;
    const allowed = Boolean(officer && dockCamera &&
      (officer.officer.supervisor || officer.officer.officer_id === e.detail.officer));
    detailMine.hidden = !(allowed && e.detail.clips > 0);
    detailPictures(allowed);
  });
  detailMine.addEventListener("click", function () {
    detail.close();
    openMine(dockCamera);
  });

  // --- the case number editor -------------------------------------------------------------

  const caseInput = $("case-input");
  let caret = 0;
  caseInput.addEventListener("blur", function () { caret = caseInput.selectionStart || 0; });

  function chip(text, onTap) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "button chip";
    b.textContent = text;
    b.addEventListener("click", onTap);
    return b;
  }

  function openEditor(clip) {
    editing = clip;
    $("case-clip").textContent = clip.name;
    caseInput.value = "";
    caret = 0;
    show($("case-error"), "");
    const choices = $("case-choices");
    choices.replaceChildren.apply(choices, list.cases.map(function (k) {
      return chip(k, function () { caseInput.value = k; caret = k.length; show($("case-error"), ""); });
    }));
    $("case-none").hidden = list.cases.length > 0;
    const prefixes = $("case-prefixes");
    prefixes.replaceChildren.apply(prefixes, list.prefixes.map(function (p) {
      return chip(p, function () { caseInput.value = p; caret = p.length; });
    }));
    editor.showModal();
    caseInput.focus();
  }

  editor.querySelectorAll(".key").forEach(function (key) {
    key.addEventListener("click", function () {
      const k = key.dataset.key;
      const v = caseInput.value;
      const at = Math.min(caret, v.length);
      if (k === "clear") { caseInput.value = ""; caret = 0; return; }
      if (k === "back") {
        if (at > 0) { caseInput.value = v.slice(0, at - 1) + v.slice(at); caret = at - 1; }
        return;
      }
      caseInput.value = v.slice(0, at) + k + v.slice(at);
      caret = at + k.length;
    });
  });
  $("case-cancel").addEventListener("click", function () { editor.close(); });
  $("case-form").addEventListener("submit", async function (e) {
    e.preventDefault();
    if (!editing) return;
    const answer = await call("POST", "/officer/tag", {
      csrf_token: officer.csrf, clip_id: editing.id, case_id: caseInput.value });
    if (answer.status === 401) { leave(answer.data.error); return; }
    if (answer.status !== 200) { show($("case-error"), answer.data.error); caseInput.focus(); return; }
    editor.close();
    await loadMine(answer.data.message);
  });

  // --- at load: perhaps still signed in (a reload) ----------------------------------------

  check().then(function () { if (officer) enter(officer); else focusCard(); });
})();
