(function () {
  "use strict";
  var T0 = performance.now();
  document.body.dataset.scriptMs = T0.toFixed(0);  // plotly.js parsed and run
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var CONFIG = {responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"]};

  // Rank maths from the layout's axis order (topology/layout.py: Layout.coords, group_index):
  // rm.axes lists {name, size, stride}, fastest first; coordinate = floor(rank / stride) mod size.
  function coords(rm, r) {
    var c = {};
    rm.axes.forEach(function (a) { c[a.name] = Math.floor(r / a.stride) % a.size; });
    return c;
  }
  function groupIndex(rm, c, axis) {  // mixed-radix index over the other axes
    var index = 0, stride = 1;
    rm.axes.forEach(function (a) { if (a.name !== axis) { index += c[a.name] * stride; stride *= a.size; } });
    return index;
  }
  function axisOf(rm, name) { return rm.axes.filter(function (a) { return a.name === name; })[0]; }

  function rankLabels(rm) {  // hover text (and in-cell text) of every rank-map cell
    var gpn = rm.gpus_per_node, per = rm.nodes_per_cell, world = rm.world, tpAxis = axisOf(rm, "tp");
    var hover = [], cell = rm.labelled ? [] : null;
    function describe(r) {
      var c = coords(rm, r);
      var g0 = r - c.tp * tpAxis.stride, g1 = g0 + (tpAxis.size - 1) * tpAxis.stride;
      var cross = Math.floor(g0 / gpn) !== Math.floor(g1 / gpn);
      return {pipe: c.pp, data: c.dp, tensor: c.tp, context: c.cp || 0, tpGroup: groupIndex(rm, c, "tp"),
              tpRanks: tpAxis.size > 1 ? " (ranks " + g0 + "\u2013" + g1 + (cross ? ", CROSSES NODES" : "") + ")" : "",
              dpGroup: groupIndex(rm, c, "dp"), ppGroup: groupIndex(rm, c, "pp")};
    }
    for (var y = 0; y < rm.rows; y++) {
      var hrow = [], crow = [];
      for (var x = 0; x < rm.width; x++) {
        var col = Math.floor(x / (gpn + 1)), g = x % (gpn + 1), unit = col * rm.rows + y;
        var z = rm.z[y][x];
        if (z === null || g === gpn || unit >= rm.units) { hrow.push(""); crow.push(""); continue; }
        var n0 = unit * per, n1 = Math.min(n0 + per, rm.nodes) - 1;
        while (n1 > n0 && n1 * gpn + g >= world) n1--;
        var r0 = n0 * gpn + g, r1 = n1 * gpn + g, a = describe(r0), b = describe(r1);
        if (per === 1) {
          hrow.push("rank " + r0 + " \u00b7 node " + n0 + ", GPU " + g + "<br>pipeline stage " + a.pipe +
                    "<br>TP group " + a.tpGroup + a.tpRanks + ", tensor rank " + a.tensor +
                    (rm.cp > 1 ? "<br>context rank " + a.context + " of " + rm.cp + " (" + rm.cp_kind + ")" : "") +
                    "<br>DP replica " + a.data + " (DP group " + a.dpGroup + ")" +
                    "<br>PP group " + a.ppGroup);
          crow.push("t" + a.tpGroup + "<br>d" + a.data);
        } else {
          var count = n1 - n0 + 1;
          hrow.push("nodes " + n0 + "\u2013" + n1 + ", GPU " + g + ": " + count + " ranks (" + r0 + ", " +
                    (r0 + gpn) + ", \u2026, " + r1 + ")<br>pipeline stage " +
                    (a.pipe === b.pipe ? a.pipe : a.pipe + "\u2013" + b.pipe + " (mixed)") +
                    "<br>TP groups " + a.tpGroup + "\u2013" + b.tpGroup + ", tensor rank " + a.tensor +
                    "<br>DP replicas " + (a.data === b.data ? a.data : a.data + "\u2013" + b.data));
          crow.push("");
        }
      }
      hover.push(hrow); cell && cell.push(crow);
    }
    return {hover: hover, cell: cell};
  }

  function cellRanks(rm, y, x) {
    var gpn = rm.gpus_per_node, col = Math.floor(x / (gpn + 1)), g = x % (gpn + 1);
    var unit = col * rm.rows + y, n = 0;
    var last = Math.min((unit + 1) * rm.nodes_per_cell, rm.nodes);
    for (var node = unit * rm.nodes_per_cell; node < last; node++)
      if (node * gpn + g < rm.world) n++;
    return n;
  }

  var jobs = [];
  Object.keys(D.figures).forEach(function (id) {
    var fig = D.figures[id], el = document.getElementById(id);
    if (!el) return;
    if (id === "fig-rank-map" && D.rank_map) {
      var t = rankLabels(D.rank_map);
      fig.data[0].hovertext = t.hover;
      if (t.cell) { fig.data[0].text = t.cell; fig.data[0].texttemplate = "%{text}";
                    fig.data[0].textfont = {size: D.rank_map.world <= 64 ? 12 : 8}; }
    }
    var t = performance.now();
    jobs.push(Plotly.newPlot(el, fig.data, fig.layout, CONFIG).then(function (gd) { return [id, gd]; }));
    el.dataset.plotMs = (performance.now() - t).toFixed(0);
  });

  Promise.all(jobs).then(function (done) {
    done.forEach(function (pair) {
      var id = pair[0], gd = pair[1], sec = gd.closest("section");
      if (id === "fig-rank-map") {
        var rm = D.rank_map, z = gd.data[0].z, ranks = 0, cells = 0;
        for (var y = 0; y < z.length; y++) for (var x = 0; x < z[y].length; x++)
          if (z[y][x] !== null) { cells++; ranks += cellRanks(rm, y, x); }
        sec.dataset.renderedRanks = ranks; sec.dataset.renderedCells = cells;
      } else if (id === "fig-schedule") {
        var stages = {}, mbs = {}, ops = 0;
        gd.data.forEach(function (tr) {
          if (tr.meta !== "forward" && tr.meta !== "backward") return;
          ops += tr.y.length;
          for (var i = 0; i < tr.y.length; i++) { stages[tr.y[i]] = 1; mbs[tr.customdata[i]] = 1; }
        });
        sec.dataset.renderedStages = Object.keys(stages).length;
        sec.dataset.renderedMicroBatches = Object.keys(mbs).length;
        sec.dataset.renderedOps = ops;
      }
    });
    document.body.dataset.plots = String(done.length);
    document.body.dataset.renderMs = performance.now().toFixed(0);
    document.body.dataset.ready = "1";
  }, function (err) {
    window.__reportErrors.push(String(err));
    document.body.dataset.errors = String(window.__reportErrors.length);
    document.body.dataset.errorText = window.__reportErrors.join(" | ");
  });

  function key(td) {
    var v = td.getAttribute("data-v");
    if (v !== null && v !== "" && !isNaN(+v)) return +v;
    return td.textContent.trim().toLowerCase();
  }
  function sortBy(table, idx, th) {
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a.cells[idx]), y = key(b.cells[idx]);
      var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, idx) {
      th.tabIndex = 0; th.title = th.title || "sort";
      th.addEventListener("click", function () { sortBy(table, idx, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(table, idx, th); }
      });
    });
  });
})();
