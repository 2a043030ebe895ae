// #/group?name=<group>: lag per partition pushed live (Server-Sent Events), the lag and the handled / failed /
// retried / dead-lettered rates over the last hour (sampled by the gateway), state, members and their
// assignments, the retry tiers' backlog.

import { apiUrl, getJSON } from "../../api.js";
import { count, h } from "../../dom.js";
import { lineChart, linesChart, panel, pill, problem, select, table, tile } from "../kit.js";

const RATES = [
  ["handled", "Handled/s"],
  ["failed", "Failed/s"],
  ["retried", "Retried/s"],
  ["dead_lettered", "Dead-lettered/s"],
];

function perSecond(value) {
  if (value === null || value === undefined) return "…";
  return value < 10 ? value.toFixed(1) : String(Math.round(value));
}

function ratesChart(data, name) {
  const lines = RATES.map(([kind, label]) => ({ name: label, series: data.rate_series[kind] }));
  return linesChart(lines, { label: `Records per second of ${name} over the last hour`, testid: "group-rates-chart" });
}

export function mountGroup(root, ctx) {
  const header = h("section", { class: "screen-header" }, h("h1", {}, "Group"));
  const picker = h("form", { class: "filters" });
  const body = h("div", { "data-testid": "group" }, h("p", { class: "muted" }, "Loading…"));
  const live = h("div", { "data-testid": "group-live" });
  root.append(header, panel(null, picker), body);
  let source = null;
  let timer = null;

  function partitions(data) {
    live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
    live.dataset.lag = String(data.lag);
    live.replaceChildren(
      h("p", { class: "muted" }, `Live: total lag `, h("strong", { "data-testid": "group-live-lag" }, count(data.lag)), ` at ${new Date(data.at).toLocaleTimeString()}`),
      table(
        [{ label: "Topic" }, { label: "Partition", num: true }, { label: "Committed", num: true }, { label: "End", num: true }, { label: "Lag", num: true }],
        data.partitions.map((p) => [p.topic, String(p.partition), p.committed === null ? "–" : count(p.committed), count(p.end), h("strong", {}, count(p.lag))]),
        { testid: "group-partitions" },
      ),
    );
  }

  async function load(name) {
    let data;
    try {
      data = await getJSON(`v1/console/groups/${encodeURIComponent(name)}`, ctx.token);
    } catch (error) {
      body.replaceChildren(problem(error.message));
      return;
    }
    const chooser = select("name", data.groups, name, { "data-testid": "group-select", onchange: (e) => ctx.navigate(`group?name=${encodeURIComponent(e.target.value)}`) });
    picker.replaceChildren(h("label", {}, "Group", chooser));
    partitions(data);
    body.replaceChildren(
      h(
        "div",
        { class: "tiles" },
        tile("State", data.state, "group-state"),
        tile("Members", data.members.length, "group-members-count"),
        tile("Lag", data.lag, "group-lag"),
        tile("Dead letters, last hour", data.dead_letters_last_hour, "group-dead-letters"),
      ),
      h("div", { class: "tiles", "data-testid": "group-rates" }, RATES.map(([kind, label]) => tile(label, perSecond(data.rates[kind]), `group-rate-${kind}`))),
      h(
        "div",
        { class: "console-grid" },
        panel("Lag per partition (live)", live),
        panel("Lag over the last hour", lineChart(data.lag_series, { label: `Lag of ${name} over the last hour`, testid: "group-lag-chart" })),
      ),
      panel(
        "Throughput over the last hour",
        ratesChart(data, name),
        h("p", { class: "muted" }, "Handled: the committed offsets' pace (handled, skipped or dead-lettered). Retried: moved into a retry tier. Failed: retried plus dead-lettered. Attempts inside a tier are the workers' own metrics (/metrics)."),
      ),
      h(
        "div",
        { class: "console-grid" },
        panel(
          "Members and assignments",
          table(
            [{ label: "Member" }, { label: "Client" }, { label: "Host" }, { label: "Partitions" }],
            data.members.map((m) => [h("span", { class: "mono" }, m.member_id), m.client_id, m.host, m.assignment.length ? h("span", { class: "mono" }, m.assignment.join(", ")) : h("span", { class: "muted" }, "not reported by the broker")]),
            { testid: "group-members", empty: "No members: the group's consumers are not running." },
          ),
        ),
        panel(
          "Retry tiers",
          table(
            [{ label: "Topic" }, { label: "Tier" }, { label: "Backlog", num: true }],
            data.retry_tiers.map((t) => [t.topic, t.tier, count(t.backlog)]),
            { testid: "group-retry-tiers", empty: "No retry tiers (or none created yet)." },
          ),
        ),
      ),
      h("p", {}, "Handles: ", data.event_types.map((t) => h("span", { class: "chip" }, t)), " · ", pill(data.state)),
    );
    const url = apiUrl(`v1/console/groups/${encodeURIComponent(name)}/live`);
    url.searchParams.set("access_token", ctx.token);
    source = new EventSource(url);
    source.addEventListener("lag", (event) => partitions(JSON.parse(event.data)));
    timer = setInterval(async () => {
      // the charts and rates change at the sampler's pace: re-read them every 15 s
      try {
        const fresh = await getJSON(`v1/console/groups/${encodeURIComponent(name)}`, ctx.token);
        const chart = body.querySelector('[data-testid="group-lag-chart"]');
        if (chart) chart.replaceWith(lineChart(fresh.lag_series, { label: `Lag of ${name} over the last hour`, testid: "group-lag-chart" }));
        const rates = body.querySelector('[data-testid="group-rates-chart"]');
        if (rates) (rates.closest("figure") || rates).replaceWith(ratesChart(fresh, name));
        for (const [kind] of RATES) {
          const value = body.querySelector(`[data-testid="group-rate-${kind}"]`);
          if (value) value.textContent = perSecond(fresh.rates[kind]);
        }
      } catch {
        /* shown on the next full load */
      }
    }, 15000);
    ctx.refreshed();
  }

  async function start() {
    let name = ctx.params.get("name");
    if (!name) {
      try {
        const overview = await getJSON("v1/console/overview", ctx.token);
        name = overview.groups[0] && overview.groups[0].name;
      } catch (error) {
        body.replaceChildren(problem(error.message));
        return;
      }
    }
    if (!name) {
      body.replaceChildren(h("p", { class: "muted" }, "No consumer groups are known to this gateway."));
      return;
    }
    load(name);
  }

  start();
  return {
    unmount() {
      if (source) source.close();
      clearInterval(timer);
    },
  };
}
