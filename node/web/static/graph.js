// The graph view: dagre (vendor/, a kept layout library) places the task boxes and
// routes the edges; this file only draws them as SVG and colours each box by the
// chosen run's state, which the page's live part (ul.task-states) keeps current.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var holder = document.getElementById("graph");
  var tasks = JSON.parse(document.getElementById("graph-spec").textContent);

  function el(name, attrs) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  var g = new dagre.graphlib.Graph();
  g.setGraph({rankdir: "LR", nodesep: 24, ranksep: 60, marginx: 12, marginy: 12});
  g.setDefaultEdgeLabel(function () { return {}; });
  tasks.forEach(function (t) {
    g.setNode(t.id, {width: Math.max(140, 8 * t.id.length + 36), height: 44});
  });
  tasks.forEach(function (t) {
    t.upstream.forEach(function (u) { if (g.hasNode(u)) g.setEdge(u, t.id); });
  });
  dagre.layout(g);

  var size = g.graph();
  var svg = el("svg", {width: size.width, height: size.height, viewBox: "0 0 " + size.width + " " + size.height,
                       role: "img"});
  var defs = el("defs");
  var marker = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8,
                             orient: "auto-start-reverse"});
  marker.appendChild(el("path", {d: "M 0 0 L 10 5 L 0 10 z", "class": "arrow-head"}));
  defs.appendChild(marker);
  svg.appendChild(defs);

  g.edges().forEach(function (e) {
    var points = g.edge(e).points;
    var d = points.map(function (p, i) { return (i ? "L" : "M") + p.x + " " + p.y; }).join(" ");
    svg.appendChild(el("path", {d: d, "class": "edge", "data-edge": e.v + "->" + e.w, "marker-end": "url(#arrow)"}));
  });

  var boxes = {};
  tasks.forEach(function (t) {
    var n = g.node(t.id);
    var link = el("a", {"class": "node", "data-task-id": t.id, "data-state": t.state || ""});
    var group = el("g", {transform: "translate(" + (n.x - n.width / 2) + "," + (n.y - n.height / 2) + ")"});
    group.appendChild(el("rect", {width: n.width, height: n.height, rx: 6, ry: 6}));
    var label = el("text", {x: 12, y: 19});
    label.textContent = t.id;
    var sub = el("text", {x: 12, y: 35, "class": "sub"});
    group.appendChild(label);
    group.appendChild(sub);
    var title = el("title");
    group.appendChild(title);
    link.appendChild(group);
    svg.appendChild(link);
    boxes[t.id] = {link: link, sub: sub, title: title, kind: t.kind};
  });
  holder.appendChild(svg);

  function paint() {
    document.querySelectorAll(".task-states [data-for-task]").forEach(function (li) {
      var box = boxes[li.getAttribute("data-for-task")];
      if (!box) return;
      var state = li.getAttribute("data-state") || "";
      var href = li.getAttribute("data-href");
      box.link.setAttribute("data-state", state);
      box.link.setAttribute("class", "node s-" + (state || "none"));
      if (href) box.link.setAttribute("href", href); else box.link.removeAttribute("href");
      box.sub.textContent = box.kind + (state ? " · " + state : "");
      var reason = li.getAttribute("data-reason");
      box.title.textContent = li.getAttribute("data-for-task") + ": " + (state || "no status") +
                              (reason ? " (" + reason + ")" : "");
    });
  }
  paint();
  document.addEventListener("raftflow:live", paint);
})();
