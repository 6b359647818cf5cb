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
    if (typeof hit.score === "number") {
      const level = hit.score >= 0.66 ? " high" : hit.score >= 0.33 ? " mid" : "";
      const badge = el("span", "badge" + level, hit.score.toFixed(2));
      badge.title = "calibrated relevance 0..1";
      row.appendChild(badge);
    }
    meta.appendChild(row);
    if (typeof hit.score === "number") {
      const bar = el("div", "bar"), fill = el("span");
      fill.style.width = Math.round(Math.max(0, Math.min(1, hit.score)) * 100) + "%";
      bar.appendChild(fill);
      meta.appendChild(bar);
    }
    if (hit.image) {
      const name = el("div", "name", hit.image);
      name.title = hit.image;
      if (hit.restricted) name.appendChild(el("span", "flag", " · restricted"));
      meta.appendChild(name);
      if (hit.why) meta.appendChild(el("div", "why", hit.why.reason));
    }
    if (hit.url && hit.id !== undefined) meta.appendChild(likeButton(hit));
    if (hit.why && hit.id !== undefined) meta.appendChild(decideControls(hit, c));
    c.appendChild(meta);
    return c;
  }

  // The folder filter, if any, applies to every kind of search.
  function folder() { return $("under").value.trim(); }

  // "More like this": images like this one, scored by calibrated image-to-image relevance.
  function likeButton(hit) {
    const b = el("button", "like", "more like this");
    b.type = "button";
    b.addEventListener("click", async () => {
      hide(errorBox);
      const params = new URLSearchParams({ k: kSelect.value });
      if (folder()) params.set("under", folder());
      const resp = await fetch("/api/similar/" + hit.id + "?" + params.toString());
      const body = await resp.json();
      if (!resp.ok) { show(errorBox, body.error || ("search failed: HTTP " + resp.status)); return; }
      last = Object.assign({}, body, { query: "like " + (hit.image || "#" + hit.id) });
      slider.value = 0;
      render();
      document.body.dataset.state = "done";
    });
    return b;
  }

  // Audit view: the operator's decision buttons. A decision is stored in the index and outranks the detector.
  function decideControls(hit, cardNode) {
    const box = el("div", "decide-box");
    if (hit.why.review) {
      box.appendChild(el("div", "decided", "decided: " + (hit.why.review.decision === "child" ? "shows a child" : "no child") +
                                            " (" + hit.why.review.operator + ")"));
      box.appendChild(decideButton(hit, cardNode, "clear", "clear decision"));
    } else {
      box.appendChild(decideButton(hit, cardNode, hit.restricted ? "none" : "child",
                                   hit.restricted ? "no child here" : "shows a child"));
    }
    return box;
  }

  function decideButton(hit, cardNode, decision, label) {
    const b = el("button", "decide", label);
    b.type = "button";
    b.dataset.decision = decision;
    b.addEventListener("click", async () => {
      b.disabled = true;
      const operator = $("operator").value.trim();
      if (operator) localStorage.setItem("retrieval.operator", operator);
      try {
        const resp = await fetch("/api/review", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ id: hit.id, decision: decision, operator: operator || null }) });
        const body = await resp.json();
        if (!resp.ok) { show(errorBox, body.error || ("review failed: HTTP " + resp.status)); b.disabled = false; return; }
        const fresh = Object.assign({}, body.hit, { rank: hit.rank, score: hit.score, id: hit.id });
        const i = last.hits.findIndex((h) => h.id === hit.id);
        if (i >= 0) last.hits[i] = fresh;
        cardNode.replaceWith(card(fresh));
      } catch (err) {
        show(errorBox, "Cannot reach the server (" + err.message + ")"); b.disabled = false;
      }
    });
    return b;
  }

  async function loadQueue() {
    hide(errorBox);
    const resp = await fetch("/api/review/queue?n=24");
    const body = await resp.json();
    if (!resp.ok) { show(errorBox, body.error || ("queue failed: HTTP " + resp.status)); return; }
    // queue hits answer no query: no relevance score to show
    last = { query: "review queue", restricted: false, disclaimer: null,
             hits: body.hits.map((h) => Object.assign({}, h, { score: null })) };
    slider.value = 0;
    render();
    count.textContent = body.hits.length + " images most worth a look (unreviewed, near the threshold, varied)";
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
    if (folder()) params.set("under", folder());
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

  // Search with a photo: POST /api/search (multipart); the words in the box, if any, steer it.
  async function searchPhoto(file) {
    hide(errorBox);
    document.body.dataset.state = "loading";
    const data = new FormData();
    data.append("image", file);
    data.append("k", kSelect.value);
    if (input.value.trim()) data.append("q", input.value.trim());
    if (folder()) data.append("under", folder());
    try {
      const resp = await fetch("/api/search", { method: "POST", body: data });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      if (!resp.ok) {
        last = null; render();
        show(errorBox, (body && body.error) || ("photo search failed: HTTP " + resp.status));
        document.body.dataset.state = "error";
        return;
      }
      last = Object.assign({}, body, { query: "like " + file.name });
      slider.value = 0;
      render();
      document.body.dataset.state = "done";
    } catch (err) {
      show(errorBox, "Cannot reach the server (" + err.message + ")");
      document.body.dataset.state = "error";
    }
  }
  $("photo").addEventListener("change", (ev) => { if (ev.target.files.length) searchPhoto(ev.target.files[0]); });
  // Or drop a photo anywhere on the page.
  const isFileDrag = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragover", (ev) => {
    if (!isFileDrag(ev)) return;
    ev.preventDefault();
    document.body.classList.add("dropping");
  });
  document.addEventListener("dragleave", (ev) => {
    if (ev.target === document.documentElement || ev.target === document.body) document.body.classList.remove("dropping");
  });
  document.addEventListener("drop", (ev) => {
    if (!isFileDrag(ev)) return;
    ev.preventDefault();
    document.body.classList.remove("dropping");
    const file = Array.from(ev.dataTransfer.files).find((f) => !f.type || f.type.startsWith("image/"));
    if (file) searchPhoto(file);
    else show(errorBox, "Drop a photo (an image file) to search with it.");
  });

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
    if (h.policy === "audit") {
      document.body.classList.add("audit");
      $("review-bar").hidden = false;
      $("operator").value = localStorage.getItem("retrieval.operator") || "";
      $("queue").addEventListener("click", loadQueue);
    }
  }).catch(() => { $("health").textContent = "server unreachable"; });

  const initial = new URLSearchParams(location.search).get("q");
  if (initial) { input.value = initial; search(initial.trim()); }
})();
