// The console's building blocks: tables, charts (inline SVG), code blocks, filters. Text only through dom.js
// (text nodes and attributes): event data never becomes markup.

import { count, h, s } from "../dom.js";

/** A <table class="table"> of `columns` ([{label, num}]) and `rows` (arrays of cells: text or nodes). */
export function table(columns, rows, { testid, empty = "Nothing to show.", rowAttrs } = {}) {
  const head = h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", { class: c.num ? "num" : null }, c.label))));
  const body = h(
    "tbody",
    {},
    rows.length
      ? rows.map((cells, index) =>
          h(
            "tr",
            rowAttrs ? rowAttrs(index) : {},
            ...cells.map((cell, i) => h("td", { class: columns[i] && columns[i].num ? "num" : null }, cell)),
          ),
        )
      : h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, empty)),
  );
  return h("table", { class: "table", "data-testid": testid || null }, head, body);
}

/** A panel with a title. */
export function panel(title, ...children) {
  return h("section", { class: "panel" }, title ? h("h2", {}, title) : null, ...children);
}

/** A pretty-printed JSON block (text content: never parsed as markup). */
export function code(value, testid) {
  const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  return h("pre", { class: "code", "data-testid": testid || null }, text ?? "");
}

/** Hex dump, 16 bytes a line, with printable ASCII. */
export function hexdump(hex, testid) {
  const lines = [];
  for (let i = 0; i < hex.length; i += 32) {
    const chunk = hex.slice(i, i + 32);
    const bytes = chunk.match(/../g) || [];
    const ascii = bytes.map((b) => {
      const n = parseInt(b, 16);
      return n >= 32 && n < 127 ? String.fromCharCode(n) : ".";
    });
    lines.push(`${(i / 2).toString(16).padStart(6, "0")}  ${bytes.join(" ").padEnd(47)}  ${ascii.join("")}`);
  }
  return h("pre", { class: "code hex", "data-testid": testid || null }, lines.join("\n") || "(empty)");
}

/** A state pill: Stable, Empty, Dead, replayed, ... */
export function pill(text, kind = text) {
  return h("span", { class: `state state-${kind}` }, text);
}

/** A tile of the tiles row. */
export function tile(label, value, testid) {
  return h(
    "div",
    { class: "tile" },
    h("span", { class: "tile-label" }, label),
    h("strong", { class: "tile-value", "data-testid": testid || null }, typeof value === "number" ? count(value) : value),
  );
}

/** A sparkline of [[t, value], ...] (empty: a dash). */
export function sparkline(series, label) {
  if (!series || series.length < 2) return h("span", { class: "muted", title: "sampling…" }, "–");
  const width = 140;
  const height = 28;
  const values = series.map((p) => p[1]);
  const max = Math.max(1e-9, ...values);
  const t0 = series[0][0];
  const span = Math.max(1, series[series.length - 1][0] - t0);
  const points = series.map(([t, v]) => `${(((t - t0) / span) * width).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
  return s(
    "svg",
    { class: "spark", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `${label}: last ${values.at(-1)}` },
    s("polyline", { points: points.join(" ") }),
  );
}

/** A line chart of [[unix seconds, value], ...] with its max and the time span labelled. */
export function lineChart(series, { label, unit = "", testid } = {}) {
  return linesChart([{ name: label, series }], { label, unit, testid });
}

/** Several lines ([{name, series}], one colour each, a legend below) on one time axis and one scale. */
export function linesChart(lines, { label, unit = "", testid } = {}) {
  const width = 640;
  const height = 180;
  const left = 44;
  const bottom = 22;
  const longest = Math.max(0, ...lines.map((line) => line.series.length));
  const box = s("svg", {
    class: "line-chart",
    viewBox: `0 0 ${width} ${height}`,
    preserveAspectRatio: "none",
    role: "img",
    "aria-label": label,
    "data-testid": testid || null,
    dataset: { points: longest },
  });
  box.append(s("line", { class: "axis", x1: left, y1: height - bottom, x2: width, y2: height - bottom }));
  box.append(s("line", { class: "axis", x1: left, y1: 4, x2: left, y2: height - bottom }));
  if (longest < 2) {
    box.append(s("text", { x: left + 10, y: height / 2 }, "Sampling… (a point every few seconds, kept for an hour)"));
    return box;
  }
  const points = lines.flatMap((line) => line.series);
  const max = Math.max(1, ...points.map((p) => p[1]));
  const t0 = Math.min(...points.map((p) => p[0]));
  const t1 = Math.max(...points.map((p) => p[0]));
  const span = Math.max(1, t1 - t0);
  const x = (t) => left + ((t - t0) / span) * (width - left - 6);
  const y = (v) => height - bottom - (v / max) * (height - bottom - 10);
  lines.forEach((line, index) => {
    if (line.series.length < 2) return;
    const attrs = { class: `series-${index}`, points: line.series.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") };
    box.append(s("polyline", attrs, s("title", {}, line.name)));
  });
  box.append(s("text", { x: 4, y: 14 }, `${max < 10 ? max.toFixed(1) : count(Math.round(max))}${unit}`));
  box.append(s("text", { x: 4, y: height - bottom }, "0"));
  const fmt = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  box.append(s("text", { x: left, y: height - 6 }, fmt(t0)));
  box.append(s("text", { x: width - 40, y: height - 6 }, fmt(t1)));
  if (lines.length < 2) return box;
  return h(
    "figure",
    { class: "chart" },
    box,
    h("figcaption", { class: "legend" }, lines.map((line, index) => h("span", { class: `key series-${index}` }, line.name))),
  );
}

/** Horizontal bars of [[label, n], ...]; `href(label)` makes each bar a link. */
export function bars(rows, { label, testid, href } = {}) {
  const barHeight = 20;
  const labelWidth = 260;
  const width = 640;
  const max = Math.max(1, ...rows.map((r) => r[1]));
  const height = Math.max(1, rows.length) * (barHeight + 6) + 4;
  const svg = s("svg", {
    class: "chart bars",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `${label}: ${rows.map(([name, n]) => `${name} ${n}`).join(", ") || "none"}`,
    "data-testid": testid || null,
  });
  if (!rows.length) {
    svg.append(s("text", { x: 8, y: 16 }, "None in the last hour."));
    return svg;
  }
  rows.forEach(([name, n], index) => {
    const yPos = 2 + index * (barHeight + 6);
    const w = Math.max(2, (n / max) * (width - labelWidth - 60));
    const group = s(
      "g",
      {},
      s("text", { x: labelWidth - 8, y: yPos + barHeight * 0.7, "text-anchor": "end" }, name),
      s("rect", { x: labelWidth, y: yPos, width: w, height: barHeight, rx: 4 }),
      s("text", { x: labelWidth + w + 6, y: yPos + barHeight * 0.7 }, count(n)),
    );
    svg.append(href ? s("a", { href: href(name) }, group) : group);
  });
  return svg;
}

/** A labelled input for a filter row. */
export function labelled(text, input) {
  return h("label", {}, text, input);
}

/** <select> of `options` ([value, label] or value), `value` selected. */
export function select(name, options, value, attrs = {}) {
  return h(
    "select",
    { name, ...attrs },
    ...options.map((option) => {
      const [v, text] = Array.isArray(option) ? option : [option, option];
      return h("option", { value: v, selected: String(v) === String(value ?? "") }, text);
    }),
  );
}

/** A short id: the first 8 characters. */
export function short(id) {
  return id ? String(id).slice(0, 8) : "";
}

/** "2 min ago" style age of an ISO time. */
export function ago(iso) {
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

/** A link to the flow of `correlationId` (any page: click a correlation id to follow it). */
export function flowLink(correlationId) {
  if (!correlationId) return h("span", { class: "muted" }, "–");
  return h(
    "a",
    { href: `#/flow?id=${encodeURIComponent(correlationId)}`, class: "mono", "data-testid": "flow-link", title: correlationId },
    String(correlationId).length > 24 ? short(correlationId) : correlationId,
  );
}

/** An error notice (role=alert). */
export function problem(message, testid = "console-error") {
  return h("p", { class: "notice notice-error", role: "alert", "data-testid": testid }, message);
}

/** datetime-local value -> ISO (UTC) or "". */
export function isoOf(local) {
  if (!local) return "";
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}
