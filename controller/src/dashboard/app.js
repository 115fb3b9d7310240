// The fleet dashboard's one script: keeps <main> current without a reload.
// A page says where its updates come from (data-live, a server-sent event
// stream) and what to do with them (data-mode): "refresh" fetches the
// page's <main> again (its own query and part=main) when a matching event
// arrives, at most every 250 ms; "append" puts each event's row, rendered and escaped by
// the controller, at the top of the events table.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !main.dataset.live) {
    return;
  }
  var kinds = (main.dataset.kinds || "").split(",").filter(function (k) { return k !== ""; });
  var pending = null;
  function refresh() {
    if (pending !== null) {
      return;
    }
    pending = setTimeout(function () {
      pending = null;
      fetch(location.pathname + (location.search ? location.search + "&" : "?") + "part=main", { credentials: "same-origin", cache: "no-store" })
        .then(function (resp) {
          if (resp.redirected || resp.status === 401) {
            location.href = "/ui/login";
            return null;
          }
          return resp.ok ? resp.text() : null;
        })
        .then(function (html) {
          if (html !== null) {
            main.innerHTML = html;
            main.dataset.updated = String(Date.now());
          }
        });
    }, 250);
  }
  var source = new EventSource(main.dataset.live);
  source.addEventListener("fleet", function (m) {
    var e = JSON.parse(m.data);
    if (main.dataset.mode === "append") {
      var body = main.querySelector("#events tbody");
      if (body) {
        body.insertAdjacentHTML("afterbegin", e.row);
      }
    } else if (kinds.length === 0 || kinds.indexOf(e.kind) >= 0) {
      refresh();
    }
  });
  // The browser dials the stream again by itself when it breaks (the
  // controller restarted, or another took over): once it is back, what
  // happened meanwhile is fetched.
  var lost = false;
  source.addEventListener("error", function () {
    lost = true;
  });
  source.addEventListener("open", function () {
    if (lost) {
      lost = false;
      refresh();
    }
  });
  source.addEventListener("change", refresh);
  source.addEventListener("end", function () {
    refresh();
    source.close();
  });
})();
