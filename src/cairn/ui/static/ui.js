// cairn ui: keep each [data-live] part of the page current. Every second (while the
// page is visible) it asks the part's URL again with the ETag it has; the server answers
// 304 when nothing changed, else the part's new HTML (rendered and escaped by the server).
"use strict";
(function () {
  const PERIOD_MS = 1000;

  function follow(element) {
    let etag = element.dataset.etag || "";
    let busy = false;
    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const headers = etag ? { "If-None-Match": etag } : {};
        const response = await fetch(element.dataset.live, {
          headers: headers,
          credentials: "same-origin",
          cache: "no-store",
        });
        if (response.status === 200) {
          etag = response.headers.get("ETag") || "";
          element.innerHTML = await response.text();
        }
        element.classList.toggle("stale", !(response.ok || response.status === 304));
      } catch (error) {
        element.classList.add("stale"); // the server stopped: keep what is shown, say so
      } finally {
        busy = false;
      }
    }
    setInterval(refresh, PERIOD_MS);
  }

  document.querySelectorAll("[data-live]").forEach(follow);
})();
