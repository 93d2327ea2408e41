// The desk's behaviour: the sign-in zone, pickers, live refresh, actions posted to the API,
// sortable tables. No framework; the page works (read-only) without it.
(function () {
  "use strict";

  var zone = document.getElementById("zone");
  if (zone && window.Intl) {
    zone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  }

  document.querySelectorAll("[data-autosubmit]").forEach(function (el) {
    el.addEventListener("change", function () { el.form.submit(); });
  });

  // Live: ask how far the projections have read; when that moves, fetch the board again.
  var live = document.getElementById("live");
  if (live) {
    var every = parseInt(live.getAttribute("data-poll"), 10) || 3000;
    var seen = function () {
      var board = document.getElementById("board");
      return board ? board.getAttribute("data-position") : null;
    };
    var busy = false;
    var look = function () {
      if (busy || document.hidden) { return; }
      busy = true;
      fetch("/desk/position", {credentials: "same-origin", cache: "no-store"})
        .then(function (r) {
          if (r.status === 401) { window.location.assign("/login"); }  // the key is gone
          return r.ok ? r.json() : null;
        })
        .then(function (p) {
          if (p && String(p.position) !== seen()) {
            return fetch(live.getAttribute("data-live"), {credentials: "same-origin", cache: "no-store"})
              .then(function (r) { return r.ok ? r.text() : null; })
              .then(function (html) { if (html !== null) { live.innerHTML = html; } });
          }
        })
        .catch(function () {})
        .then(function () { busy = false; });
    };
    setInterval(look, every);
  }

  // A case's actions: each form posts to the API once (its Idempotency-Key is fixed when the
  // page is drawn, so a second click is the same request), If-Match the version shown.
  var refusal = document.getElementById("refusal");
  document.querySelectorAll("form.action").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var body = {};
      form.querySelectorAll("input, select").forEach(function (el) {
        if (!el.name) { return; }
        if (el.hasAttribute("data-flag")) { if (el.checked) { body[el.name] = true; } return; }
        var v = el.value.trim();
        if (v === "") { return; }
        body[el.name] = el.hasAttribute("data-many")
          ? v.split(",").map(function (s) { return s.trim(); }).filter(Boolean) : v;
      });
      var buttons = form.querySelectorAll("button");
      buttons.forEach(function (b) { b.disabled = true; });
      var url = "/v1/cases/" + encodeURIComponent(form.getAttribute("data-case")) + "/" +
        encodeURIComponent(form.getAttribute("data-action"));
      fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          "Idempotency-Key": form.getAttribute("data-key"),
          "If-Match": '"' + form.getAttribute("data-version") + '"'
        },
        body: JSON.stringify(body)
      }).then(function (r) {
        if (r.ok) { window.location.reload(); return; }
        if (r.status === 409 || r.status === 412) {
          // The case moved on (or the rules refused the move): show it as it stands now,
          // with the refusal in words (case_pages.refusal).
          window.location.assign("/desk/cases/" + encodeURIComponent(form.getAttribute("data-case")) +
            "?seen=" + encodeURIComponent(form.getAttribute("data-version")) +
            "&tried=" + encodeURIComponent(form.getAttribute("data-action")));
          return;
        }
        return r.json().then(function (e) {
          refusal.textContent = "Not taken: " +
            ((e.error && e.error.message) || ("refused (" + r.status + ")"));
          refusal.hidden = false;
          buttons.forEach(function (b) { b.disabled = false; });
        });
      }).catch(function () {
        refusal.textContent = "the service did not answer; try again";
        refusal.hidden = false;
        buttons.forEach(function (b) { b.disabled = false; });
      });
    });
  });

  // Sortable tables: click (or Enter on) a heading; again to reverse.
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, column) {
      var sort = function () {
        var numeric = th.getAttribute("data-sort") === "number";
        var down = th.getAttribute("aria-sort") !== "descending";
        table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", down ? "descending" : "ascending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[column].textContent, y = b.cells[column].textContent;
          var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
          return down ? -c : c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
    });
  });
})();
