// Thresher dashboard: live updates without reloading. The pages work without this file (links
// and forms navigate); with it, a [data-poll] element asks its URL for fresh parts and swaps
// them in place, and the trial table sorts and pages in place.
"use strict";
(function () {
  const last = new WeakMap(); // element → the HTML last put in it (innerHTML reads back normalized)

  function focusInside(el) {
    const a = document.activeElement;
    return a && a !== document.body && el.contains(a);
  }

  // Put each part's HTML in its element. A part holding the keyboard focus waits for the next
  // poll (replacing it would drop the focus); returns false when one waited.
  function apply(parts, keepFocus) {
    let all = true;
    for (const [id, html] of Object.entries(parts)) {
      const el = document.getElementById(id);
      if (!el || last.get(el) === html) continue;
      if (focusInside(el) && !keepFocus) { all = false; continue; }
      const key = keepFocus && document.activeElement && document.activeElement.dataset.focusKey;
      el.innerHTML = html;
      last.set(el, html);
      if (key) {
        const again = el.querySelector('[data-focus-key="' + key + '"]');
        if (again) again.focus();
      }
    }
    tick();
    return all;
  }

  function signInAgain() {
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
  }

  function startPolling(root) {
    const every = Number(root.dataset.pollEvery || 2000);
    const status = document.querySelector("[data-poll-status]");
    let failures = 0;
    async function poll() {
      if (root.dataset.final === "true") return;
      if (document.hidden) { setTimeout(poll, every); return; }
      const url = new URL(root.dataset.poll, location.href);
      if (root.dataset.version) url.searchParams.set("v", root.dataset.version);
      try {
        const r = await fetch(url, { credentials: "same-origin", cache: "no-store",
                                     headers: { Accept: "application/json" } });
        if (r.status === 401) { signInAgain(); return; }
        if (r.status === 200) {
          const body = await r.json();
          if (apply(body.parts, false)) root.dataset.version = body.version;
          if (body.final && root.dataset.version === body.version) root.dataset.final = "true";
        } else if (r.status !== 204) {
          throw new Error("HTTP " + r.status);
        }
        failures = 0;
        if (status) status.textContent = "";
      } catch (e) {
        failures += 1;
        if (status) status.textContent = "Live updates paused (" + e.message + "); retrying.";
      }
      if (root.dataset.final !== "true") setTimeout(poll, every * Math.min(1 + failures, 10));
    }
    root.pollNow = poll;
    setTimeout(poll, every);
  }

  // Sort, page and filter the trial table in place; the address bar keeps the state.
  async function swapFragment(root, fragmentUrl, pageUrl) {
    const r = await fetch(fragmentUrl, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) { signInAgain(); return; }
    if (!r.ok) { location.assign(pageUrl); return; }
    const body = await r.json();
    apply(body.parts, true);
    const poll = new URL(root.dataset.poll, location.href);
    poll.search = new URL(fragmentUrl, location.href).search;
    root.dataset.poll = poll.pathname + poll.search;
    history.replaceState(null, "", pageUrl);
  }

  document.addEventListener("click", function (ev) {
    const link = ev.target.closest && ev.target.closest("a[data-fragment]");
    const root = link && link.closest("[data-poll]");
    if (!root || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    swapFragment(root, link.dataset.fragment, link.href);
  });

  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    const root = form.closest("[data-poll]");
    if (!root) return;
    if (form.dataset.fragmentForm) {
      ev.preventDefault();
      const q = new URLSearchParams(new FormData(form));
      for (const [k, v] of [...q.entries()]) if (v === "") q.delete(k);
      const page = new URL(form.action, location.href);
      page.search = q.toString();
      swapFragment(root, form.dataset.fragmentForm + "?" + q.toString(), page.href);
    } else if (form.hasAttribute("data-async")) {
      ev.preventDefault();
      for (const b of form.querySelectorAll("button")) b.disabled = true;
      fetch(form.action, { method: "POST", credentials: "same-origin", body: new FormData(form) })
        .then(function () { root.dataset.version = ""; if (root.pollNow) root.pollNow(); });
    }
  });

  function fmt(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }

  // Elapsed time of a running job, counted on from the server's clock at the last render.
  function tick() {
    for (const el of document.querySelectorAll("[data-elapsed-from]")) {
      const skew = Date.parse(el.dataset.serverNow) - (el.loadedAt || (el.loadedAt = Date.now()));
      el.textContent = fmt((Date.now() + skew - Date.parse(el.dataset.elapsedFrom)) / 1000);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    for (const el of document.querySelectorAll("[data-part]")) last.set(el, null);
    for (const root of document.querySelectorAll("[data-poll]")) startPolling(root);
    setInterval(tick, 1000);
    const summary = document.getElementById("error-summary");
    if (summary) summary.focus();
  });
})();
