// The search page's state: labels, the request behind the results and its kept result, per
// catalog, in sessionStorage (per browser tab, kept across reloads) and in the URL (a link or a
// reload shows the same screen). Labels belong to a search session: a new query asks first.
(function () {
  "use strict";
  const KEY = "clip-branches";
  const STATES = ["", "pos", "neg"];
  const UNDO_DEPTH = 200;
  const load = () => { try { return JSON.parse(sessionStorage.getItem(KEY)) || {}; } catch (e) { return {}; } };
  const state = Object.assign({ labels: {}, last: {}, token: {}, shown: {}, previous: {}, undo: {} }, load());
  const save = () => sessionStorage.setItem(KEY, JSON.stringify(state));
  const app = document.getElementById("app");
  const catalog = app ? app.dataset.catalog : (document.querySelector("input[name=catalog]") || {}).value;
  const labels = () => (state.labels[catalog] = state.labels[catalog] || {});
  const undo = () => (state.undo[catalog] = state.undo[catalog] || []);
  const $ = (id) => document.getElementById(id);
  const ids = (l, s) => Object.keys(l).filter((k) => l[k] === s).join(",");
  let pending = null;   // the main request in flight: what it asks, to remember once it succeeds
  let anchor = null;    // the last thumbnail clicked, for shift-click ranges

  // Error responses (4xx/5xx) carry a message fragment: shown in #messages, never over the grid.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "[45]..", swap: true, error: false },
  ];

  const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

  function paint(root, onlyNew) {
    const l = labels();
    const newAfter = conceptNewAfter();
    (root || document).querySelectorAll(onlyNew ? ".thumb:not([aria-pressed])" : ".thumb").forEach((b) => {
      const s = l[b.dataset.id] || "";
      const isNew = newAfter !== null && b.closest("#results") !== null && BigInt(b.dataset.id) > newAfter;
      b.classList.toggle("pos", s === "pos");
      b.classList.toggle("neg", s === "neg");
      b.classList.toggle("new", isNew);
      b.setAttribute("aria-label", `image ${b.dataset.id}${isNew ? ", new" : ""}, ${s === "pos" ? "positive" : s === "neg" ? "negative" : "unlabelled"}`);
      b.setAttribute("aria-pressed", s ? "true" : "false");
    });
    counts();
  }

  function counts() {
    const l = labels();
    const vals = Object.values(l);
    const pos = vals.filter((v) => v === "pos").length;
    const neg = vals.filter((v) => v === "neg").length;
    ["label-counts", "bar-counts"].forEach((id) => { if ($(id)) $(id).textContent = `${pos} positive, ${neg} negative`; });
    ["refine-button", "bar-refine"].forEach((id) => {
      const refine = $(id);
      if (!refine) return;
      refine.disabled = pos === 0;
      refine.title = pos ? "Train a classifier on your labels and apply it to the whole catalog"
        : "Label at least one image positive first";
    });
    if ($("undo")) $("undo").disabled = undo().length === 0;
    tray();
    const prev = state.previous[catalog];
    const back = $("previous-session");
    if (back) {
      back.hidden = !prev;
      const query = prev && prev.last && (prev.last.kind === "refine" ? prev.last.query : prev.last);
      const q = query && query.params && query.params.q;
      if (prev) back.textContent = `Back to the previous session (${plural(Object.keys(prev.labels || {}).length, "label", "labels")}${q ? `, “${q}”` : ""})`;
    }
  }

  // The tray: every labelled image, removable one by one.
  function tray() {
    const box = $("tray");
    if (!box) return;
    const l = labels();
    const keys = Object.keys(l);
    box.hidden = keys.length === 0;
    $("tray-count").textContent = `(${keys.length})`;
    const list = $("tray-items");
    const have = new Map([...list.children].map((li) => [li.dataset.id, li]));
    keys.forEach((id) => {
      let li = have.get(id);
      if (!li) {
        li = document.createElement("li");
        li.dataset.id = id;
        const img = document.createElement("img");
        img.src = `/thumb/${encodeURIComponent(catalog)}/${id}`;
        img.alt = `image ${id}`;
        const rm = document.createElement("button");
        rm.type = "button";
        rm.className = "tray-remove";
        rm.dataset.id = id;
        rm.textContent = "×";
        li.append(img, rm);
        list.append(li);
      }
      li.className = l[id];
      li.lastChild.setAttribute("aria-label", `remove the ${l[id] === "pos" ? "positive" : "negative"} label of image ${id}`);
      have.delete(id);
    });
    have.forEach((li) => li.remove());
  }

  // Every change of labels goes through here, as one undoable step.
  function change(updates) {
    const l = labels();
    const before = {};
    let changed = false;
    Object.entries(updates).forEach(([id, s]) => {
      if ((l[id] || "") === s) return;
      before[id] = l[id] || "";
      if (s) l[id] = s; else delete l[id];
      changed = true;
    });
    if (!changed) return;
    undo().push(before);
    if (undo().length > UNDO_DEPTH) undo().shift();
    save();
    paint();
  }

  function undoLast() {
    const step = undo().pop();
    if (!step) return;
    const l = labels();
    Object.entries(step).forEach(([id, s]) => { if (s) l[id] = s; else delete l[id]; });
    save();
    paint();
  }

  // Results and Label next: two views of one refine result; "All" buttons act on the one shown.
  function visibleGrid() {
    const next = $("next-panel");
    return next && !next.hidden ? $("next-grid") : ($("grid") || document);
  }

  function showView(id) {
    const next = id === "tab-next";
    const panel = $("next-panel");
    const grid = $("grid");
    if (!panel || !grid) return;
    panel.hidden = !next;
    grid.hidden = next;
    document.querySelectorAll(".view-tab").forEach((t) => {
      const on = t.id === id;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
    });
  }

  // -- the URL: what is on screen, so that a link or a reload reproduces it ---------------------
  function toUrl() {
    const last = state.last[catalog];
    const u = new URL(location.href);
    ["q", "similar", "concept", "kind", "model", "negatives_sampled", "weight", "pos", "neg", "result"].forEach((k) => u.searchParams.delete(k));
    u.searchParams.set("catalog", catalog);
    if (last) {
      const p = last.params || {};
      if (last.kind === "search") u.searchParams.set("q", p.q || "");
      if (last.kind === "similar") u.searchParams.set("similar", p.id);
      if (last.kind === "image") u.searchParams.set("kind", "image");
      if (last.kind === "concept") u.searchParams.set("concept", p.name || "");
      if (last.kind === "refine") {
        u.searchParams.set("kind", "refine");
        if (last.query && last.query.kind === "search") u.searchParams.set("q", last.query.params.q || "");
        u.searchParams.set("model", p.model);
        u.searchParams.set("negatives_sampled", p.sampled_negatives);
        u.searchParams.set("weight", p.negative_weight);
        u.searchParams.set("pos", p.positives || "");
        if (p.negatives) u.searchParams.set("neg", p.negatives);
      }
      if (state.token[catalog]) u.searchParams.set("result", state.token[catalog]);
    }
    history.replaceState(null, "", u);
  }

  // The request a URL describes, when it describes one (a shared link).
  function fromUrl() {
    const p = new URL(location.href).searchParams;
    const kind = p.get("kind") || (p.has("concept") ? "concept" : p.has("similar") ? "similar" : p.has("q") ? "search" : null);
    if (!kind) return null;
    const req = { kind, token: p.get("result") || "", params: {} };
    if (kind === "search") req.params.q = p.get("q") || "";
    if (kind === "concept") req.params.name = p.get("concept") || "";
    if (kind === "similar") req.params.id = p.get("similar");
    if (kind === "refine") {
      Object.assign(req.params, {
        q: p.get("q") || "",
        model: p.get("model") || "ensemble",
        sampled_negatives: p.get("negatives_sampled") || "",
        negative_weight: p.get("weight") || "1",
        positives: p.get("pos") || "",
        negatives: p.get("neg") || "",
      });
    }
    return req;
  }

  function setControls(params) {
    if (!params) return;
    if (params.q !== undefined && $("q")) $("q").value = params.q;
    if (params.model && $("model")) $("model").value = params.model;
    const sliders = { sampled_negatives: ["sampled-negatives", "neg-out"], negative_weight: ["negative-weight", "weight-out"] };
    Object.entries(sliders).forEach(([name, [input, out]]) => {
      if (params[name] !== undefined && params[name] !== "" && $(input)) { $(input).value = params[name]; $(out).value = $(input).value; }
    });
  }

  // Show the request's kept result (as it was), or, when the server no longer keeps it, run the
  // request again with the labels it was made with. An image search cannot be run again.
  function restore(last) {
    const token = state.token[catalog];
    const again = () => rerun(last);
    if (!token) { again(); return; }
    fetch(`/result/${encodeURIComponent(token)}?shown=${state.shown[catalog] || 0}`, { headers: { "HX-Request": "true" } })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => { const r = $("results"); r.innerHTML = html; htmx.process(r); afterResult(); })
      .catch(again);
  }

  // Run the request ``last`` again (with the labels it was made with), not its kept result.
  function rerun(last) {
    if (last.kind === "image") {
      message("The image search's result is no longer kept by the server: search with the image again.");
      return;
    }
    pending = Object.assign({}, last);
    if (last.kind === "concept") {
      const seen = seenMap()[last.params.name];
      const path = `/concept/${encodeURIComponent(catalog)}/${encodeURIComponent(last.params.name || "")}`;
      htmx.ajax("GET", path, { target: "#results", values: seen !== undefined ? { seen } : {} });
      return;
    }
    const path = { search: "/search", similar: "/similar", refine: "/refine" }[last.kind];
    const params = Object.assign({ catalog }, last.params);
    htmx.ajax(last.kind === "refine" ? "POST" : "GET", path, { target: "#results", values: params });
  }

  function message(text) {
    const box = $("messages");
    if (!box) return;
    box.innerHTML = "";
    if (text) { const d = document.createElement("div"); d.className = "error"; d.setAttribute("role", "alert"); d.textContent = text; box.append(d); }
  }

  function afterResult() {
    const shown = $("query-image");
    if (shown && queryImage) { shown.src = queryImage; shown.hidden = false; }
    const result = document.querySelector("#results .result");
    if (result && result.dataset.token) {
      state.token[catalog] = result.dataset.token;
      state.shown[catalog] = document.querySelectorAll("#grid .thumb").length;
      save();
    }
    if (result && result.dataset.concept && result.dataset.maxId) {
      const { concept, maxId } = result.dataset;
      setSeen((m) => { if (m[concept] === undefined || BigInt(maxId) > BigInt(m[concept])) m[concept] = maxId; });
    }
    paint(document.getElementById("results"));
    toUrl();
  }

  // -- a new query while labels exist: keep them, or start a new session -------------------------
  function describe(elt, params) {
    if (elt.id === "search-form") return { kind: "search", params: { q: params.q } };
    if (elt.id === "image-form") return { kind: "image", params: {} };
    if (elt.classList && elt.classList.contains("similar")) {
      return { kind: "similar", params: { id: new URL(elt.getAttribute("hx-get"), location.href).searchParams.get("id") } };
    }
    if (elt.id === "refine-form") return { kind: "refine", params: Object.assign({}, params) };
    if (elt.classList && elt.classList.contains("concept-open")) return { kind: "concept", params: { name: elt.dataset.name } };
    return null;
  }

  function isNewQuery(req) {
    if (!req || req.kind === "refine") return false;
    const last = state.last[catalog];
    const sessionQuery = last && (last.kind === "refine" ? last.query : last);
    if (!sessionQuery) return true;
    return sessionQuery.kind !== req.kind || JSON.stringify(sessionQuery.params) !== JSON.stringify(req.params) || req.kind === "image";
  }

  document.body.addEventListener("htmx:confirm", (ev) => {
    const elt = ev.detail.elt;
    const req = describe(elt, Object.fromEntries(elt.tagName === "FORM" ? new FormData(elt) : []));
    if (!req || req.kind === "refine" || Object.keys(labels()).length === 0 || !isNewQuery(req)) return;
    const dialog = $("new-query");
    if (!dialog) return;
    ev.preventDefault();
    $("new-query-count").textContent = plural(Object.keys(labels()).length, "label", "labels");
    dialog.returnValue = "";
    dialog.onclose = () => {
      if (dialog.returnValue === "keep") ev.detail.issueRequest(true);
      if (dialog.returnValue === "new") {
        state.previous[catalog] = { labels: labels(), last: state.last[catalog], token: state.token[catalog], shown: state.shown[catalog], undo: undo() };
        state.labels[catalog] = {};
        state.undo[catalog] = [];
        save();
        paint();
        ev.detail.issueRequest(true);
      }
    };
    dialog.showModal();
  });

  function swapSessions() {
    const prev = state.previous[catalog];
    if (!prev) return;
    state.previous[catalog] = { labels: labels(), last: state.last[catalog], token: state.token[catalog], shown: state.shown[catalog], undo: undo() };
    state.labels[catalog] = prev.labels || {};
    state.last[catalog] = prev.last;
    state.token[catalog] = prev.token;
    state.shown[catalog] = prev.shown;
    state.undo[catalog] = prev.undo || [];
    save();
    paint();
    if (prev.last) { setControls(prev.last.kind === "refine" ? Object.assign({}, prev.last.params, prev.last.query && prev.last.query.params) : prev.last.params); restore(prev.last); }
    else { $("results").innerHTML = ""; toUrl(); }
  }

  function save_file(blob, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  // -- the viewer: one image large, with its score and metadata, labelled by keys ----------------
  let viewing = null;  // the thumbnail shown in the viewer

  function view(thumb) {
    const box = $("lightbox");
    if (!box || !thumb) return;
    viewing = thumb;
    const id = thumb.dataset.id;
    const img = $("lightbox-image");
    img.classList.remove("small");
    img.onload = () => img.classList.toggle("small", img.naturalWidth * 2 <= img.clientWidth);
    img.src = `/image/${encodeURIComponent(catalog)}/${id}`;
    img.alt = `image ${id}`;
    $("lightbox-title").textContent = `Image ${id}`;
    $("lightbox-open").href = img.src;
    const score = thumb.closest(".cell").querySelector(".score");
    $("lightbox-score").textContent = score ? `${score.title}: ${score.textContent}` : "";
    $("lightbox-info").textContent = "";
    htmx.ajax("GET", `/image-info/${encodeURIComponent(catalog)}/${id}`, { target: "#lightbox-info", swap: "innerHTML" });
    viewState();
    if (!box.open) box.showModal();
  }

  function viewState() {
    if (!viewing) return;
    const s = labels()[viewing.dataset.id] || "";
    $("lightbox-state").textContent = s === "pos" ? "✓ positive" : s === "neg" ? "✗ negative" : "unlabelled";
    $("lightbox-state").className = s;
  }

  function viewStep(step) {
    if (!viewing) return;
    const grid = viewing.closest(".grid") || document;
    const all = [...grid.querySelectorAll(".thumb")];
    const next = all[all.indexOf(viewing) + step];
    if (next) view(next);
  }

  // -- clicks, keys, inputs -------------------------------------------------------------------
  document.addEventListener("click", (ev) => {
    const b = ev.target.closest(".thumb");
    if (b) {
      const cur = labels()[b.dataset.id] || "";
      const next = STATES[(STATES.indexOf(cur) + 1) % STATES.length];
      const grid = b.closest(".grid");
      if (ev.shiftKey && anchor && grid && grid.contains(anchor) && anchor !== b) {
        const all = [...grid.querySelectorAll(".thumb")];
        const [i, j] = [all.indexOf(anchor), all.indexOf(b)].sort((x, y) => x - y);
        const target = labels()[anchor.dataset.id] || next;
        change(Object.fromEntries(all.slice(i, j + 1).map((t) => [t.dataset.id, target])));
      } else {
        change({ [b.dataset.id]: next });
      }
      anchor = b;
      return;
    }
    const open = ev.target.closest("a.open");
    if (open && !ev.ctrlKey && !ev.metaKey && !ev.shiftKey) {
      ev.preventDefault();
      view(open.closest(".cell").querySelector(".thumb"));
      return;
    }
    const rm = ev.target.closest(".tray-remove");
    if (rm) { change({ [rm.dataset.id]: "" }); return; }
    if (ev.target.closest(".concept-open")) { $("concepts-dialog").close(); return; }  // htmx loads it
    const toggle = ev.target.closest(".concept-toggle");
    if (toggle) { toggleConceptForm(toggle); return; }
    const cancel = ev.target.closest(".concept-cancel");
    if (cancel) { closeConceptForm(cancel.closest("form")); return; }
    const tab = ev.target.closest(".view-tab");
    if (tab) { showView(tab.id); return; }
    // "All" label only the unlabelled images of the view shown: labels given are never overwritten.
    const all = (s) => {
      const l = labels();
      change(Object.fromEntries([...visibleGrid().querySelectorAll(".thumb")].filter((t) => !l[t.dataset.id]).map((t) => [t.dataset.id, s])));
    };
    switch (ev.target.id) {
      case "all-positive": all("pos"); break;
      case "all-negative": all("neg"); break;
      case "undo": undoLast(); break;
      case "lightbox-pos": change({ [viewing.dataset.id]: "pos" }); viewState(); break;
      case "lightbox-neg": change({ [viewing.dataset.id]: "neg" }); viewState(); break;
      case "lightbox-clear": change({ [viewing.dataset.id]: "" }); viewState(); break;
      case "lightbox-prev": viewStep(-1); break;
      case "lightbox-next": viewStep(1); break;
      case "lightbox-close": $("lightbox").close(); break;
      case "previous-session": swapSessions(); break;
      case "concepts-button": openConcepts(); break;
      case "concepts-close": $("concepts-dialog").close(); break;
      case "save-concept": openSave(); break;
      case "save-concept-cancel": $("save-concept-dialog").close(); break;
      case "growth-rerun": {
        const last = state.last[catalog];
        baseRows = latestRows;
        showGrowth();
        if (last) rerun(last);
        break;
      }
      case "growth-dismiss": baseRows = latestRows; showGrowth(); break;
      case "clear-labels": change(Object.fromEntries(Object.keys(labels()).map((id) => [id, ""]))); break;
      case "reset":
        change(Object.fromEntries(Object.keys(labels()).map((id) => [id, ""])));
        delete state.last[catalog]; delete state.token[catalog]; delete state.shown[catalog]; save();
        $("results").innerHTML = ""; message(""); toUrl(); break;
      case "export-labels": {
        const blob = new Blob([JSON.stringify({ catalog, positives: ids(labels(), "pos").split(",").filter(Boolean).map(Number), negatives: ids(labels(), "neg").split(",").filter(Boolean).map(Number) }, null, 1)], { type: "application/json" });
        save_file(blob, `labels-${catalog}.json`);
        break;
      }
      case "download-csv": {
        // the console's query under its limits, posted as htmx posts (a native form post from a
        // page sent without a referrer carries "Origin: null", which the server refuses)
        const body = new URLSearchParams({ sql: $("sql").value, catalog, result: state.token[catalog] || "" });
        fetch("/console/csv", { method: "POST", body })
          .then((r) => (r.ok ? r.blob() : r.text().then((t) => Promise.reject(new Error(t)))))
          .then((blob) => save_file(blob, "query.csv"))
          .catch((e) => {
            const box = $("console-result");
            box.innerHTML = "";
            const d = document.createElement("div");
            d.className = "error"; d.setAttribute("role", "alert");
            let text = e.message;
            try { text = JSON.parse(text).detail || text; } catch (x) { text = text.replace(/<[^>]*>/g, ""); }
            d.textContent = text; box.append(d);
          });
        break;
      }
      case "copy-sql": {
        const text = $("sql-text").textContent;
        const done = () => { ev.target.textContent = "Copied"; setTimeout(() => (ev.target.textContent = "Copy"), 1500); };
        if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, done);
        else { const r = document.createRange(); r.selectNodeContents($("sql-text"));
               const sel = getSelection(); sel.removeAllRanges(); sel.addRange(r); document.execCommand("copy"); done(); }
        break;
      }
    }
  });

  // No inline handlers: the Content-Security-Policy allows scripts from /static only.
  document.addEventListener("change", (ev) => {
    if (ev.target.id === "catalog-chooser") ev.target.form.submit();
    if (ev.target.id === "import-labels" && ev.target.files.length) {
      const file = ev.target.files[0];
      file.text().then((text) => {
        let data;
        try { data = JSON.parse(text); } catch (e) { data = null; }
        const good = (a) => Array.isArray(a) && a.every((x) => Number.isInteger(x) && x >= 0);
        if (!data || !good(data.positives || []) || !good(data.negatives || [])) {
          message(`${file.name} is not a labels file: it must be JSON with "positives" and "negatives", lists of image ids (as "Save labels" writes).`);
          return;
        }
        message("");
        const updates = {};
        (data.positives || []).forEach((id) => { updates[id] = "pos"; });
        (data.negatives || []).forEach((id) => { updates[id] = "neg"; });
        change(updates);  // one undoable step
      });
      ev.target.value = "";
    }
  });
  document.addEventListener("input", (ev) => {
    const out = { "sampled-negatives": "neg-out", "negative-weight": "weight-out" }[ev.target.id];
    if (out) $(out).value = ev.target.value;
  });

  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "z" && !/^(INPUT|TEXTAREA)$/.test(ev.target.tagName)) {
      undoLast(); ev.preventDefault(); return;
    }
    if ($("lightbox") && $("lightbox").open) {
      const s = { p: "pos", n: "neg", u: "" }[ev.key];
      if (s !== undefined) { change({ [viewing.dataset.id]: s }); viewState(); ev.preventDefault(); }
      if (ev.key === "ArrowRight") { viewStep(1); ev.preventDefault(); }
      if (ev.key === "ArrowLeft") { viewStep(-1); ev.preventDefault(); }
      return;
    }
    const tab = ev.target.closest && ev.target.closest(".view-tab");
    if (tab && (ev.key === "ArrowRight" || ev.key === "ArrowLeft")) {
      const other = tab.id === "tab-results" ? "tab-next" : "tab-results";
      showView(other); $(other).focus(); ev.preventDefault(); return;
    }
    const b = ev.target.closest && ev.target.closest(".thumb");
    if (!b) return;
    const s = { p: "pos", n: "neg", u: "" }[ev.key];
    if (s !== undefined) { change({ [b.dataset.id]: s }); ev.preventDefault(); }
  });

  // -- an image dropped on the page or pasted searches by that image ----------------------------
  let queryImage = null;  // an object URL of the image the last image search sent

  function searchWithFile(file) {
    const input = $("image-file");
    if (!input || !file || !file.type.startsWith("image/")) return false;
    const dt = new DataTransfer();
    dt.items.add(file);
    input.files = dt.files;
    htmx.trigger($("image-form"), "submit");
    return true;
  }

  const imageOf = (items) => [...(items || [])].map((i) => (i.getAsFile ? i.getAsFile() : i)).find((f) => f && f.type && f.type.startsWith("image/"));
  document.addEventListener("dragover", (ev) => {
    if (!app || ![...ev.dataTransfer.types].includes("Files")) return;
    ev.preventDefault();
    document.body.classList.add("dropping");
  });
  document.addEventListener("dragleave", (ev) => { if (!ev.relatedTarget) document.body.classList.remove("dropping"); });
  document.addEventListener("drop", (ev) => {
    document.body.classList.remove("dropping");
    if (!app) return;
    const file = imageOf(ev.dataTransfer.files);
    if (file) { ev.preventDefault(); searchWithFile(file); }
  });
  document.addEventListener("paste", (ev) => {
    if (!app || /^(INPUT|TEXTAREA)$/.test(ev.target.tagName) && !imageOf(ev.clipboardData.items)) return;
    const file = imageOf(ev.clipboardData.items);
    if (file) { ev.preventDefault(); searchWithFile(file); }
  });

  // -- saved concepts: when each was last opened lives here, in localStorage ---------------------
  // (per catalog: name -> the largest image id shown then, as text: ids are 64-bit). The server
  // counts a concept's ids above it as new: the panel gets them all as ``seen``, name:id pairs.
  const SEEN_KEY = "clip-branches-seen";
  const SEEN_CHARS = 8000;  // what the server reads of ``seen`` (web/concepts.py)
  const SEEN_PAIR = /^[a-z][a-z0-9_]{0,47}:-?[0-9]{1,19}$/;
  const seenAll = () => { try { const all = JSON.parse(localStorage.getItem(SEEN_KEY)); return all && typeof all === "object" ? all : {}; } catch (e) { return {}; } };
  const seenMap = () => { const m = seenAll()[catalog]; return m && typeof m === "object" ? m : {}; };

  function setSeen(update) {
    const all = seenAll();
    const m = seenMap();
    update(m);
    all[catalog] = m;
    try { localStorage.setItem(SEEN_KEY, JSON.stringify(all)); } catch (e) { /* storage refused: nothing is marked new */ }
  }

  function seenText() {
    let text = "";
    Object.entries(seenMap()).forEach(([name, id]) => {
      const pair = `${name}:${id}`;
      if (SEEN_PAIR.test(pair) && text.length + pair.length + 1 <= SEEN_CHARS) text += (text ? "," : "") + pair;
    });
    return text;
  }

  // The id above which the opened concept's images are new, or null (no concept shown).
  function conceptNewAfter() {
    const result = document.querySelector("#results .result[data-concept]");
    return result && /^-?[0-9]+$/.test(result.dataset.newAfter || "") ? BigInt(result.dataset.newAfter) : null;
  }

  function openConcepts() {
    const dialog = $("concepts-dialog");
    if (!dialog) return;
    if (!dialog.open) dialog.showModal();
    $("concepts-title").focus();
  }

  function openSave() {
    const result = document.querySelector("#results .result");
    const dialog = $("save-concept-dialog");
    if (!result || !dialog) return;
    $("save-concept-token").value = result.dataset.token;
    $("save-concept-error").innerHTML = "";
    dialog.showModal();
    $("concept-name").focus();
  }

  function toggleConceptForm(toggle) {
    const form = $(toggle.getAttribute("aria-controls"));
    const row = toggle.closest("li");
    const show = form.hidden;
    row.querySelectorAll(".concept-form").forEach((f) => { f.hidden = true; });
    row.querySelectorAll(".concept-toggle").forEach((t) => t.setAttribute("aria-expanded", "false"));
    form.hidden = !show;
    toggle.setAttribute("aria-expanded", show ? "true" : "false");
    if (!show) return;
    const input = form.querySelector("input[type=text]");
    if (input) { input.focus(); input.select(); } else form.querySelector("button[type=submit]").focus();
  }

  function closeConceptForm(form) {
    form.hidden = true;
    const toggle = form.closest("li").querySelector(`[aria-controls="${form.id}"]`);
    toggle.setAttribute("aria-expanded", "false");
    toggle.focus();
  }

  // The panel was (re)drawn: follow a rename or a deletion in what was seen, forget concepts no
  // longer saved, and after a save show the panel with its confirmation.
  function conceptsShown(elt) {
    const done = $("concepts-done");
    const listed = new Set([...document.querySelectorAll("#concepts-panel li.concept")].map((li) => li.dataset.name));
    setSeen((m) => {
      if (done && done.dataset.action === "renamed" && m[done.dataset.oldName] !== undefined) m[done.dataset.name] = m[done.dataset.oldName];
      if (done && done.dataset.action === "saved") delete m[done.dataset.name];  // a new concept: all of it is new
      Object.keys(m).forEach((name) => { if (!listed.has(name)) delete m[name]; });
    });
    const last = state.last[catalog];
    if (done && done.dataset.action === "renamed" && last && last.kind === "concept" && last.params.name === done.dataset.oldName) {
      last.params.name = done.dataset.name;  // the concept on screen: its link names it anew
      save();
      toUrl();
    }
    if (elt && elt.id === "save-concept-form") {
      $("save-concept-dialog").close();
      elt.reset();
      openConcepts();
    }
    const dialog = $("concepts-dialog");
    if (done && dialog.open) done.focus();
    else if (dialog.open && !dialog.contains(document.activeElement)) $("concepts-title").focus();
  }

  // -- the catalog growing while the page is open: the server takes new images in --------------
  const GROWTH_POLL_MS = 5000;
  let baseRows = app ? Number(app.dataset.rows) : 0;  // what the results on screen were computed over
  let latestRows = baseRows;
  let poller = null;

  function pollGrowth() {
    fetch(`/api/health?catalog=${encodeURIComponent(catalog)}`)
      .then((r) => (r.ok ? r.json() : null))
      .then((health) => {
        const c = health && health.catalogs && health.catalogs[catalog];
        if (!c || !Number.isInteger(c.rows)) return;
        latestRows = c.rows;
        showGrowth();
      })
      .catch(() => {});
  }

  // Rows, not the version: the version counts concept writes and index folds too, which leave
  // every search's result as it was.
  function showGrowth() {
    const bar = $("growth");
    if (!bar) return;
    const delta = latestRows - baseRows;
    if (!delta) { bar.hidden = true; $("growth-text").textContent = ""; return; }
    const text = delta > 0 ? `${plural(delta, "new image", "new images")} since this page loaded.`
      : `${plural(-delta, "image", "images")} removed since this page loaded.`;
    const last = state.last[catalog];
    $("growth-rerun").hidden = !last || last.kind === "image";
    $("growth-rerun").textContent = last && last.kind === "refine" ? "Fine-tune again" : last && last.kind === "concept" ? "Open the concept again" : "Search again";
    bar.hidden = false;
    if ($("growth-text").textContent !== text) $("growth-text").textContent = text;
  }

  function startPolling() { if (!poller) poller = setInterval(pollGrowth, GROWTH_POLL_MS); }
  function stopPolling() { clearInterval(poller); poller = null; }
  document.addEventListener("visibilitychange", () => {
    if (!app) return;
    if (document.hidden) stopPolling();
    else { pollGrowth(); startPolling(); }
  });

  // -- requests ---------------------------------------------------------------------------------
  document.body.addEventListener("htmx:configRequest", (ev) => {
    const elt = ev.detail.elt;
    if (elt.id === "refine-form") {
      const l = labels();
      ev.detail.parameters.positives = ids(l, "pos");
      ev.detail.parameters.negatives = ids(l, "neg");
    }
    if (elt.id === "console-form") {
      ev.detail.parameters.result = state.token[catalog] || "";
    }
    if (ev.detail.path.startsWith("/concepts")) ev.detail.parameters.seen = seenText();
    if (elt.classList && elt.classList.contains("concept-open")) {
      // the id it was last opened at; "Show only the new" and "Show all" keep the one on screen
      const seen = elt.dataset.seen !== undefined ? elt.dataset.seen : seenMap()[elt.dataset.name];
      if (seen !== undefined && seen !== "") ev.detail.parameters.seen = seen;
      if (elt.dataset.onlyNew) ev.detail.parameters.only_new = "true";
    }
    const errors = elt.closest && elt.closest("[data-errors]");
    if (errors && $(errors.dataset.errors)) $(errors.dataset.errors).innerHTML = "";
    const req = describe(elt, ev.detail.parameters);
    if (req && req.kind === "image" && $("image-file").files.length) {
      if (queryImage) URL.revokeObjectURL(queryImage);
      queryImage = URL.createObjectURL($("image-file").files[0]);
    }
    if (req) {
      message("");
      if (req.kind === "refine") {
        delete req.params.catalog;
        const last = state.last[catalog];
        req.query = last && (last.kind === "refine" ? last.query : last);
      }
      pending = req;
    }
  });

  document.body.addEventListener("htmx:beforeSwap", (ev) => {
    if (ev.detail.xhr.status >= 400) {  // errors go above the grid, which stays as it was
      // ...or into the dialog whose form asked, where the user is looking
      const elt = ev.detail.requestConfig ? ev.detail.requestConfig.elt : ev.detail.elt;
      const own = elt && elt.closest && elt.closest("[data-errors]");
      ev.detail.target = (own && $(own.dataset.errors)) || $("messages") || ev.detail.target;
      ev.detail.swapOverride = "innerHTML";
      pending = null;
    }
  });

  document.body.addEventListener("htmx:afterSwap", (ev) => {
    if (ev.detail.xhr.status >= 400) return;
    if (ev.detail.target.id === "concepts-panel") { conceptsShown(ev.detail.requestConfig ? ev.detail.requestConfig.elt : ev.detail.elt); return; }
    if (ev.detail.target.id === "results" && pending) {
      state.last[catalog] = pending;
      pending = null;
      save();
      afterResult();
      return;
    }
    // a page of results: paint only its new thumbnails, so a page costs the same at any depth
    paint(document, true);
    if ($("grid")) { state.shown[catalog] = $("grid").querySelectorAll(".thumb").length; save(); }
  });

  document.body.addEventListener("htmx:sendError", () => message("The server did not answer: is clip-branches serve still running?"));

  document.addEventListener("DOMContentLoaded", () => {
    if (!app) { paint(); return; }
    if (!document.hidden) startPolling();
    const linked = fromUrl();
    const last = state.last[catalog];
    const differs = linked && (linked.token
      ? linked.token !== (state.token[catalog] || "")
      : !last || last.kind !== linked.kind || JSON.stringify(last.params) !== JSON.stringify(linked.params));
    if (differs) {
      // A link from elsewhere (or another tab): its labels and request, its result if still kept.
      if (linked.kind === "refine") {
        const l = {};
        (linked.params.positives || "").split(",").filter(Boolean).forEach((id) => { l[id] = "pos"; });
        (linked.params.negatives || "").split(",").filter(Boolean).forEach((id) => { l[id] = "neg"; });
        if (Object.keys(labels()).length && JSON.stringify(l) !== JSON.stringify(labels())) {
          state.previous[catalog] = { labels: labels(), last, token: state.token[catalog], shown: state.shown[catalog], undo: undo() };
        }
        state.labels[catalog] = l;
        state.undo[catalog] = [];
        linked.query = linked.params.q ? { kind: "search", params: { q: linked.params.q } } : undefined;
        delete linked.params.q;
      }
      state.last[catalog] = { kind: linked.kind, params: linked.params, query: linked.query };
      state.token[catalog] = linked.token;
      state.shown[catalog] = 0;
      save();
    }
    const now = state.last[catalog];
    paint();
    if (now) {
      setControls(now.kind === "refine" ? Object.assign({}, now.params, now.query && now.query.params) : now.params);
      restore(now);
    }
  });
})();
