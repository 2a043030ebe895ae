// #/overview: what is stuck at a glance: topics (partitions, records, events/s), groups (state, members, lag),
// dead letters of the last hour by group and error type, the broker. Refreshed every 5 seconds.

import { getJSON } from "../../api.js";
import { count, h } from "../../dom.js";
import { bars, panel, pill, problem, sparkline, table, tile } from "../kit.js";

const PERIOD_MS = 5000;

export function mountOverview(root, ctx) {
  const body = h("div", { "data-testid": "overview" }, h("p", { class: "muted" }, "Loading…"));
  root.append(h("section", { class: "screen-header" }, h("h1", {}, "Overview")), body);
  let timer = null;
  let stopped = false;

  function show(data) {
    const totalLag = data.groups.reduce((n, g) => n + g.lag, 0);
    const records = data.topics.reduce((n, t) => n + (t.records || 0), 0);
    const broker = data.broker;
    const tiles = h(
      "div",
      { class: "tiles" },
      tile("Records", records, "tile-records"),
      tile("Total lag", totalLag, "tile-lag"),
      tile("Dead letters, last hour", data.dead_letters.total, "tile-dead-letters"),
      tile("Broker", broker.engine, "tile-broker"),
    );
    const topics = table(
      [{ label: "Topic" }, { label: "Partitions", num: true }, { label: "Records", num: true }, { label: "Events/s", num: true }, { label: "Last hour" }],
      data.topics.map((t) => [
        t.entity in { session: 1, coach: 1, payment: 1, notification: 1, user: 1, cache: 1, system: 1 }
          ? h("a", { href: `#/explorer?topic=${encodeURIComponent(t.entity)}` }, t.name)
          : t.name,
        count(t.partitions),
        t.records === null || t.records === undefined ? "–" : count(t.records),
        t.rate === null || t.rate === undefined ? "–" : t.rate.toFixed(2),
        sparkline(t.rate_series, `${t.name} events/s`),
      ]),
      { testid: "overview-topics" },
    );
    const groups = table(
      [{ label: "Group" }, { label: "State" }, { label: "Members", num: true }, { label: "Lag", num: true }, { label: "Lag, last hour" }],
      data.groups.map((g) => [
        h("a", { href: `#/group?name=${encodeURIComponent(g.name)}`, "data-testid": "overview-group" }, g.name),
        pill(g.state),
        count(g.members),
        h("strong", { dataset: { lag: g.lag } }, count(g.lag)),
        sparkline(g.lag_series, `${g.name} lag`),
      ]),
      { testid: "overview-groups", empty: "No consumer groups are known to this gateway." },
    );
    const dl = data.dead_letters;
    const byPair = dl.by_group_and_error.map((row) => [`${row.group} · ${row.error_type}`, row.count]);
    const letters = panel(
      "Dead letters in the last hour, by group and error type",
      bars(byPair, {
        label: "Dead letters by group and error type",
        testid: "overview-dead-letter-chart",
        href: (name) => {
          const [group, error] = name.split(" · ");
          return `#/dead-letters?group=${encodeURIComponent(group)}&error=${encodeURIComponent(error)}`;
        },
      }),
      h("p", {}, h("a", { href: "#/dead-letters", "data-testid": "overview-to-dead-letters" }, `All dead letters →`)),
    );
    const brokerPanel = panel(
      "Broker",
      h(
        "dl",
        { class: "kv", "data-testid": "overview-broker" },
        h("dt", {}, "Engine"),
        h("dd", {}, broker.engine),
        broker.engine_version ? [h("dt", {}, "Version"), h("dd", {}, broker.engine_version)] : null,
        h("dt", {}, "Protocol"),
        h("dd", { "data-testid": "overview-protocol" }, broker.version || "unknown"),
        h("dt", {}, "Brokers"),
        h("dd", {}, String(broker.brokers ?? "?")),
        h("dt", {}, "Bootstrap"),
        h("dd", { class: "mono" }, broker.bootstrap),
        broker.error ? [h("dt", {}, "Problem"), h("dd", {}, broker.error)] : null,
      ),
    );
    body.replaceChildren(
      tiles,
      h("div", { class: "console-grid" }, panel("Consumer groups", groups), letters),
      h("div", { class: "console-grid" }, panel("Topics", topics), brokerPanel),
      h("p", { class: "muted" }, `Rates and lag history are sampled by this gateway every ${data.sample_interval_s} s and kept for an hour.`),
    );
    body.dataset.loaded = "true";
    ctx.refreshed();
  }

  async function refresh() {
    try {
      show(await getJSON("v1/console/overview", ctx.token));
    } catch (error) {
      body.replaceChildren(problem(error.message));
    }
    if (!stopped) timer = setTimeout(refresh, PERIOD_MS);
  }

  refresh();
  return {
    unmount() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
