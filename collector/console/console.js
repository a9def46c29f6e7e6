// The console's only script: draws the charts a page describes in
// data-chart attributes with the vendored uPlot. Pages work without it
// (every chart has its numbers in a table).
"use strict";

(function () {
  // Versions differ in colour and in dash pattern (not colour alone).
  const colours = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#a16207", "#0e7490"];
  const dashes = [[], [8, 4], [2, 3], [12, 3, 2, 3]];

  function draw(el) {
    const c = JSON.parse(el.dataset.chart);
    const width = Math.max(320, Math.min(el.parentElement.clientWidth || 640, 900));
    const opts = {
      title: c.title,
      width: width,
      height: 220,
      scales: { x: { time: true } },
      axes: [{}, { label: c.unit, size: 64 }],
      series: [{ label: "time" }].concat(c.series.map(function (s, i) {
        return {
          label: s.label,
          stroke: colours[i % colours.length],
          dash: dashes[i % dashes.length],
          width: 2,
          points: { show: true, size: 5 },
          value: function (u, v) { return v == null ? "—" : v.toFixed(3) + " " + c.unit; },
        };
      })),
    };
    const data = [c.x].concat(c.series.map(function (s) { return s.values; }));
    new uPlot(opts, data, el);
    el.dataset.drawn = "true";
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (typeof uPlot === "undefined") return;
    document.querySelectorAll("[data-chart]").forEach(draw);
  });
})();
