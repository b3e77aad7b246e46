// Labels and the last request live in sessionStorage: per browser tab, kept across reloads.
(function () {
  "use strict";
  const KEY = "clip-branches";
  const STATES = ["", "pos", "neg"];
  const load = () => { try { return JSON.parse(sessionStorage.getItem(KEY)) || {}; } catch (e) { return {}; } };
  const state = Object.assign({ labels: {}, last: {}, token: {} }, load());
  const save = () => sessionStorage.setItem(KEY, JSON.stringify(state));
  const app = document.getElementById("app");
  const catalog = app ? app.dataset.catalog : (document.querySelector("input[name=catalog]") || {}).value;
  const labels = () => (state.labels[catalog] = state.labels[catalog] || {});

  // Error responses (4xx/5xx) carry a message fragment: show it instead of dropping it.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "[45]..", swap: true, error: false },
  ];

  function paint(root) {
    const l = labels();
    (root || document).querySelectorAll(".thumb").forEach((b) => {
      const s = l[b.dataset.id] || "";
      b.classList.toggle("pos", s === "pos");
      b.classList.toggle("neg", s === "neg");
      b.setAttribute("aria-label", `image ${b.dataset.id}, ${s === "pos" ? "positive" : s === "neg" ? "negative" : "unlabelled"}`);
      b.setAttribute("aria-pressed", s ? "true" : "false");
    });
    const vals = Object.values(l);
    const counts = document.getElementById("label-counts");
    if (counts) {
      counts.textContent = `${vals.filter((v) => v === "pos").length} positive, ${vals.filter((v) => v === "neg").length} negative`;
    }
  }

  // Results and Label next: two views of one refine result; "All" buttons act on the one shown.
  function visibleGrid() {
    const next = document.getElementById("next-panel");
    return next && !next.hidden ? document.getElementById("next-grid") : (document.getElementById("grid") || document);
  }

  function showView(id) {
    const next = id === "tab-next";
    const panel = document.getElementById("next-panel");
    const grid = document.getElementById("grid");
    if (!panel || !grid) return;
    panel.hidden = !next;
    grid.hidden = next;
    document.querySelectorAll(".view-tab").forEach((t) => {
      const on = t.id === id;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
    });
  }

  function setLabel(id, s) {
    if (s) labels()[id] = s; else delete labels()[id];
    save();
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest(".thumb");
    if (b) {
      const cur = labels()[b.dataset.id] || "";
      setLabel(b.dataset.id, STATES[(STATES.indexOf(cur) + 1) % STATES.length]);
      paint();
      return;
    }
    const tab = ev.target.closest(".view-tab");
    if (tab) { showView(tab.id); return; }
    const all = (s) => { visibleGrid().querySelectorAll(".thumb").forEach((t) => setLabel(t.dataset.id, s)); paint(); };
    switch (ev.target.id) {
      case "all-positive": all("pos"); break;
      case "all-negative": all("neg"); break;
      case "clear-labels": state.labels[catalog] = {}; save(); paint(); break;
      case "reset":
        state.labels[catalog] = {}; delete state.last[catalog]; delete state.token[catalog]; save();
        document.getElementById("results").innerHTML = ""; paint(); break;
      case "copy-sql": {
        const text = document.getElementById("sql-text").textContent;
        const done = () => { ev.target.textContent = "Copied"; setTimeout(() => (ev.target.textContent = "Copy"), 1500); };
        if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, done);
        else { const r = document.createRange(); r.selectNodeContents(document.getElementById("sql-text"));
               const sel = getSelection(); sel.removeAllRanges(); sel.addRange(r); document.execCommand("copy"); done(); }
        break;
      }
    }
  });

  // No inline handlers: the Content-Security-Policy allows scripts from /static only.
  document.addEventListener("change", (ev) => {
    if (ev.target.id === "catalog-chooser") ev.target.form.submit();
  });
  document.addEventListener("input", (ev) => {
    const out = { "sampled-negatives": "neg-out", "negative-weight": "weight-out" }[ev.target.id];
    if (out) document.getElementById(out).value = ev.target.value;
  });

  document.addEventListener("keydown", (ev) => {
    const tab = ev.target.closest && ev.target.closest(".view-tab");
    if (tab && (ev.key === "ArrowRight" || ev.key === "ArrowLeft")) {
      const other = tab.id === "tab-results" ? "tab-next" : "tab-results";
      showView(other); document.getElementById(other).focus(); ev.preventDefault(); return;
    }
    const b = ev.target.closest && ev.target.closest(".thumb");
    if (!b) return;
    const s = { p: "pos", n: "neg", u: "" }[ev.key];
    if (s !== undefined) { setLabel(b.dataset.id, s); paint(); ev.preventDefault(); }
  });

  document.body.addEventListener("htmx:configRequest", (ev) => {
    const elt = ev.detail.elt;
    if (elt.id === "refine-form") {
      const l = labels();
      ev.detail.parameters.positives = Object.keys(l).filter((k) => l[k] === "pos").join(",");
      ev.detail.parameters.negatives = Object.keys(l).filter((k) => l[k] === "neg").join(",");
    }
    if (elt.id === "console-form") {
      ev.detail.parameters.result = state.token[catalog] || "";
    }
    // Remember what produced the results, to show them again after a reload.
    if (["search-form", "refine-form"].includes(elt.id) || (elt.classList && elt.classList.contains("similar"))) {
      state.last[catalog] = { verb: ev.detail.verb, path: ev.detail.path, params: Object.assign({}, ev.detail.parameters) };
      save();
    }
  });

  document.body.addEventListener("htmx:afterSwap", (ev) => {
    const result = ev.detail.target.querySelector && ev.detail.target.querySelector(".result");
    if (result && result.dataset.token) { state.token[catalog] = result.dataset.token; save(); }
    paint();
  });

  document.addEventListener("DOMContentLoaded", () => {
    paint();
    const last = app && state.last[catalog];
    if (last && last.path) {
      const params = Object.assign({}, last.params);
      if (last.path === "/refine") {  // with the labels as they are now
        const l = labels();
        params.positives = Object.keys(l).filter((k) => l[k] === "pos").join(",");
        params.negatives = Object.keys(l).filter((k) => l[k] === "neg").join(",");
      }
      if (last.params && last.params.q) document.getElementById("q").value = last.params.q;
      htmx.ajax(last.verb.toUpperCase(), last.path, { target: "#results", values: params });
    }
  });
})();
