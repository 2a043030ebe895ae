// #/stats: the original EventBusStats: GET /v1/stats every 5 seconds (admin), while the screen is open.

import { getJSON } from "../api.js";
import { clock, count, h, s } from "../dom.js";

const BAR_HEIGHT = 22;
const LABEL_WIDTH = 210;
const CHART_WIDTH = 640;

function chart(byType) {
  const rows = Object.entries(byType).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const max = Math.max(1, ...rows.map(([, n]) => n));
  const barSpace = CHART_WIDTH - LABEL_WIDTH - 60;
  const height = Math.max(1, rows.length) * (BAR_HEIGHT + 6) + 4;
  const described = rows.map(([type, n]) => `${type}: ${n}`).join(", ") || "no events yet";
  return s(
    "svg",
    {
      class: "chart",
      viewBox: `0 0 ${CHART_WIDTH} ${height}`,
      role: "img",
      "aria-label": `Events by type: ${described}`,
      "data-testid": "stats-chart",
    },
    ...rows.map(([type, n], index) => {
      const y = 2 + index * (BAR_HEIGHT + 6);
      const width = Math.max(2, (n / max) * barSpace);
      return s(
        "g",
        { class: `bar bar-${type.split(":")[0]}` },
        s("text", { x: LABEL_WIDTH - 8, y: y + BAR_HEIGHT * 0.7, "text-anchor": "end", class: "bar-label" }, type),
        s("rect", { x: LABEL_WIDTH, y, width, height: BAR_HEIGHT, rx: 5 }),
        s("text", { x: LABEL_WIDTH + width + 6, y: y + BAR_HEIGHT * 0.7, class: "bar-value" }, count(n)),
      );
    }),
  );
}

function tile(label, value, testid) {
  return h(
    "div",
    { class: "tile" },
    h("span", { class: "tile-label" }, label),
    h("strong", { class: "tile-value", "data-testid": testid, dataset: { value } }, count(value)),
  );
}

export function mountStats(root, ctx) {
  const period = (ctx.config.stats_interval_s || 5) * 1000;
  const tiles = h("div", { class: "tiles", "data-testid": "stats-tiles" });
  const chartBox = h("div", { class: "chart-box" });
  const typeTable = h("tbody", {});
  const groupTable = h("tbody", {});
  const updated = h("p", { class: "muted", role: "status", "data-testid": "stats-updated", dataset: { refreshes: 0 } });
  const problem = h("p", { class: "notice notice-error", role: "alert", "data-testid": "stats-error", hidden: true });
  let refreshes = 0;
  let timer = null;
  let stopped = false;

  function show(stats) {
    const groups = stats.groups || [];
    const lag = groups.reduce((sum, group) => sum + (group.lag || 0), 0);
    tiles.replaceChildren(
      tile("Total events", stats.totalEvents, "stats-total"),
      tile("Active subscriptions", stats.subscriptionCount, "stats-subscriptions"),
      tile("Event types seen", Object.keys(stats.eventsByType || {}).length, "stats-types"),
      tile("Consumer lag", lag, "stats-lag"),
    );
    chartBox.replaceChildren(chart(stats.eventsByType || {}));
    typeTable.replaceChildren(
      ...Object.entries(stats.eventsByType || {})
        .sort((a, b) => a[0].localeCompare(b[0]))
        .map(([type, n]) =>
          h("tr", { "data-testid": "stats-type-row", dataset: { type } }, h("th", { scope: "row" }, type), h("td", {}, count(n))),
        ),
    );
    groupTable.replaceChildren(
      ...(groups.length
        ? groups.map((group) =>
            h(
              "tr",
              { "data-testid": "stats-group-row", dataset: { group: group.group, lag: group.lag } },
              h("th", { scope: "row" }, group.group),
              h("td", {}, (group.event_types || []).join(", ")),
              h("td", { class: group.lag ? "lagging" : "" }, count(group.lag)),
            ),
          )
        : [h("tr", {}, h("td", { colspan: 3, class: "muted" }, "This gateway reports no consumer group."))]),
    );
    refreshes += 1;
    updated.dataset.refreshes = String(refreshes);
    updated.textContent = `Updated ${clock(new Date())} · refreshes every ${period / 1000} s`;
  }

  async function refresh() {
    try {
      const stats = await getJSON("v1/stats", ctx.token);
      if (stopped) return;
      problem.hidden = true;
      show(stats);
    } catch (error) {
      if (stopped) return;
      problem.hidden = false;
      problem.textContent = `Stats unavailable: ${error.message}. Retrying…`;
    }
  }

  root.append(
    h(
      "section",
      { class: "screen", "aria-labelledby": "stats-title" },
      h(
        "header",
        { class: "screen-header" },
        h("h1", { id: "stats-title" }, "Event bus statistics"),
        updated,
      ),
      problem,
      tiles,
      h(
        "div",
        { class: "columns" },
        h(
          "div",
          { class: "column wide panel" },
          h("h2", {}, "Events by type"),
          chartBox,
          h(
            "details",
            { class: "as-table" },
            h("summary", {}, "Show as a table"),
            h(
              "table",
              { class: "table", "data-testid": "stats-by-type" },
              h("caption", { class: "visually-hidden" }, "Events by type"),
              h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Type"), h("th", { scope: "col" }, "Events"))),
              typeTable,
            ),
          ),
        ),
        h(
          "div",
          { class: "column panel" },
          h("h2", {}, "Consumer groups"),
          h(
            "table",
            { class: "table", "data-testid": "stats-groups" },
            h("caption", { class: "visually-hidden" }, "Lag per consumer group"),
            h(
              "thead",
              {},
              h("tr", {}, h("th", { scope: "col" }, "Group"), h("th", { scope: "col" }, "Reads"), h("th", { scope: "col" }, "Lag")),
            ),
            groupTable,
          ),
        ),
      ),
    ),
  );

  let inFlight = false;
  async function tick() {
    if (inFlight) return; // a slow answer: the next tick asks again
    inFlight = true;
    try {
      await refresh();
    } finally {
      inFlight = false;
    }
  }
  tick();
  timer = setInterval(tick, period); // as the original: every 5 s, whatever each answer took
  return {
    unmount() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
