// Search page: queries /api/search, draws the grid. All data is inserted as text (never as HTML).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), input = $("q"), kSelect = $("k"), go = $("go");
  const slider = $("min-score"), sliderValue = $("min-score-value"), count = $("count");
  const errorBox = $("error"), banner = $("banner"), empty = $("empty"), grid = $("results");
  let last = null;   // last successful /api/search body
  let seq = 0;       // ignore answers to superseded queries

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function show(node, text) { node.textContent = text; node.hidden = false; }
  function hide(node) { node.hidden = true; node.textContent = ""; }

  function card(hit) {
    const c = el("div", "card");
    c.dataset.rank = hit.rank;
    if (hit.url) {
      const a = el("a");
      a.href = hit.url; a.target = "_blank"; a.rel = "noopener";
      const img = el("img");
      img.src = hit.thumb; img.alt = hit.image; img.loading = "lazy";
      a.appendChild(img);
      if (hit.why) a.appendChild(boxes(hit.why));
      c.appendChild(a);
    } else {
      c.classList.add("is-withheld");
      c.appendChild(el("div", "withheld", hit.disclaimer || "This image is unavailable."));
    }
    const meta = el("div", "meta");
    const row = el("div", "row");
    row.appendChild(el("span", "rank", "#" + hit.rank));
    const level = hit.score >= 0.66 ? " high" : hit.score >= 0.33 ? " mid" : "";
    const badge = el("span", "badge" + level, hit.score.toFixed(2));
    badge.title = "calibrated relevance 0..1";
    row.appendChild(badge);
    meta.appendChild(row);
    const bar = el("div", "bar"), fill = el("span");
    fill.style.width = Math.round(Math.max(0, Math.min(1, hit.score)) * 100) + "%";
    bar.appendChild(fill);
    meta.appendChild(bar);
    if (hit.image) {
      const name = el("div", "name", hit.image);
      name.title = hit.image;
      if (hit.restricted) name.appendChild(el("span", "flag", " · restricted"));
      meta.appendChild(name);
      if (hit.why) meta.appendChild(el("div", "why", hit.why.reason));
    }
    c.appendChild(meta);
    return c;
  }

  // Audit view: the detector's face boxes over the picture (image shown whole: object-fit contain, 4:3 frame).
  function boxes(why) {
    const layer = el("div", "boxes");
    const w = (why.size || [0, 0])[0], h = (why.size || [0, 0])[1];
    if (!w || !h) return layer;
    const fit = Math.min(4 / w, 3 / h), pw = w * fit, ph = h * fit;
    const ox = (4 - pw) / 2, oy = (3 - ph) / 2;
    for (const b of why.boxes || []) {
      const d = el("div", "box" + (b.child_prob >= 0.5 ? " child" : ""));
      d.style.left = ((ox + b.box[0] * fit) / 4 * 100) + "%";
      d.style.top = ((oy + b.box[1] * fit) / 3 * 100) + "%";
      d.style.width = ((b.box[2] - b.box[0]) * fit / 4 * 100) + "%";
      d.style.height = ((b.box[3] - b.box[1]) * fit / 3 * 100) + "%";
      d.title = "P(child) " + b.child_prob.toFixed(2);
      d.appendChild(el("span", "", b.child_prob.toFixed(2)));
      layer.appendChild(d);
    }
    return layer;
  }

  function render() {
    const min = parseFloat(slider.value);
    sliderValue.textContent = min.toFixed(2);
    grid.replaceChildren();
    hide(banner); hide(empty); count.textContent = "";
    if (!last) return;
    if (last.restricted && last.disclaimer) {
      show(banner, last.disclaimer);
      if (!last.hits.length) return;
    }
    const shown = last.hits.filter((h) => h.score >= min);
    if (!last.hits.length) {
      show(empty, "No images matched “" + last.query + "”. Try other words.");
    } else if (!shown.length) {
      show(empty, "No image scored " + min.toFixed(2) + " or more. Lower the minimum score.");
    }
    for (const hit of shown) grid.appendChild(card(hit));
    if (last.hits.length) count.textContent = shown.length + " of " + last.hits.length + " shown";
  }

  async function search(q) {
    const mine = ++seq;
    hide(errorBox);
    go.disabled = true;
    document.body.dataset.state = "loading";
    const params = new URLSearchParams({ q: q, k: kSelect.value });
    try {
      const resp = await fetch("/api/search?" + params.toString(), { headers: { Accept: "application/json" } });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      if (mine !== seq) return;
      if (!resp.ok) {
        last = null; render();
        show(errorBox, (body && body.error) || ("search failed: HTTP " + resp.status));
        document.body.dataset.state = "error";
        return;
      }
      last = body;
      history.replaceState(null, "", "?" + new URLSearchParams({ q: q }).toString());
      render();
      document.body.dataset.state = "done";
    } catch (err) {
      if (mine !== seq) return;
      last = null; render();
      show(errorBox, "Cannot reach the server (" + err.message + "); is `retrieve serve` still running?");
      document.body.dataset.state = "error";
    } finally {
      if (mine === seq) go.disabled = false;
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = input.value.trim();
    if (!q) { last = null; render(); show(errorBox, "Type a few words describing the image you want."); return; }
    search(q);
  });
  slider.addEventListener("input", render);
  kSelect.addEventListener("change", () => { if (input.value.trim()) search(input.value.trim()); });

  fetch("/api/health").then((r) => r.json()).then((h) => {
    $("health").textContent = h.count + " images indexed · model " + (h.model_id || "?") + " · policy " + h.policy;
    if (h.policy === "audit") document.body.classList.add("audit");
  }).catch(() => { $("health").textContent = "server unreachable"; });

  const initial = new URLSearchParams(location.search).get("q");
  if (initial) { input.value = initial; search(initial.trim()); }
})();
