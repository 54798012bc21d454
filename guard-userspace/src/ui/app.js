// Live rows for the timeline: the server renders each new matching row and sends it over
// server-sent events; this only inserts it. Nothing is fetched from anywhere else.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var body = document.querySelector("#timeline tbody");
  if (!live || !body || !window.EventSource) {
    return;
  }
  var count = document.getElementById("matched");
  var source = new EventSource(live.getAttribute("data-src"));
  source.addEventListener("open", function () {
    live.textContent = "live";
    live.className = "on";
  });
  source.addEventListener("error", function () {
    live.textContent = "reconnecting…";
    live.className = "off";
  });
  source.addEventListener("row", function (e) {
    body.insertAdjacentHTML("afterbegin", e.data);
    var empty = document.getElementById("empty");
    if (empty) {
      empty.remove();
    }
    if (count) {
      count.textContent = String(Number(count.textContent) + 1);
    }
  });
})();
