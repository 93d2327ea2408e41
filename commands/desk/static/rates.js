// The weekly cohorts' four rates as lines (Apache ECharts, vendored: see VENDORED.md).
(function () {
  "use strict";
  var el = document.getElementById("weekly-chart");
  var data = JSON.parse(document.getElementById("weekly-data").textContent);
  var names = {
    return_rate: "return rate",
    refund_rate: "refund rate",
    quality_return_rate: "quality-return rate",
    dispute_rate: "dispute rate"
  };
  var chart = echarts.init(el, null, {renderer: "svg"});
  chart.setOption({
    animation: false,
    tooltip: {trigger: "axis", valueFormatter: function (v) { return (v * 100).toFixed(2) + "%"; }},
    legend: {top: 0, type: "scroll"},
    grid: {left: 48, right: 16, top: 48, bottom: 32},
    xAxis: {type: "category", data: data.map(function (w) { return w.week; })},
    yAxis: {type: "value", axisLabel: {formatter: function (v) { return Math.round(v * 100) + "%"; }}},
    series: Object.keys(names).map(function (k) {
      return {name: names[k], type: "line", data: data.map(function (w) { return w[k]; })};
    })
  });
  window.addEventListener("resize", function () { chart.resize(); });
})();
