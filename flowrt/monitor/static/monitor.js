// Shows every <time datetime="..."> in the viewer's time zone; the UTC stays in the title.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var pad = function (n) { return String(n).padStart(2, "0"); };
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var moment = new Date(el.getAttribute("datetime"));
    if (isNaN(moment.getTime())) { return; }
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "local";
    el.textContent = moment.getFullYear() + "-" + pad(moment.getMonth() + 1) + "-" +
      pad(moment.getDate()) + " " + pad(moment.getHours()) + ":" + pad(moment.getMinutes()) +
      ":" + pad(moment.getSeconds());
    if (!el.title) { el.title = el.getAttribute("datetime") + " UTC"; }
    el.title = el.title + " (shown in " + zone + ")";
  });
});
