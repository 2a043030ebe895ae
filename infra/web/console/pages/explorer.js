// #/explorer: browse a topic by partition and offset or from a time (the newest records otherwise), filtered by
// event type, key, any header and text in the decoded payload; each record decoded with its headers and position.

import { getJSON } from "../../api.js";
import { clock, h } from "../../dom.js";
import { code, flowLink, isoOf, labelled, panel, problem, select, short, table } from "../kit.js";

const TOPICS = ["session", "coach", "payment", "notification", "user", "cache", "system"];

export function mountExplorer(root, ctx) {
  const p = ctx.params;
  const input = (name, attrs = {}) => h("input", { name, value: p.get(name) || "", "data-testid": `explorer-${name}`, ...attrs });
  const fields = {
    topic: select("topic", TOPICS, p.get("topic") || "session", { "data-testid": "explorer-topic" }),
    partition: input("partition", { type: "number", min: 0, placeholder: "all" }),
    offset: input("offset", { type: "number", min: 0, placeholder: "newest" }),
    since: input("since", { type: "datetime-local" }),
    type: input("type", { placeholder: "session:*" }),
    key: input("key"),
    header: input("header", { placeholder: "name=value" }),
    q: input("q", { placeholder: "text in the payload" }),
    limit: select("limit", ["20", "50", "100", "200"], p.get("limit") || "50"),
  };
  const form = h(
    "form",
    { class: "filters" },
    labelled("Topic", fields.topic),
    labelled("Partition", fields.partition),
    labelled("From offset", fields.offset),
    labelled("From time", fields.since),
    labelled("Event type", fields.type),
    labelled("Key", fields.key),
    labelled("Header", fields.header),
    labelled("Text", fields.q),
    labelled("Show", fields.limit),
    h("button", { type: "submit", class: "button primary", "data-testid": "explorer-go" }, "Browse"),
  );
  const out = h("div", { "data-testid": "explorer" });
  const detail = h("div", { "data-testid": "explorer-detail" });
  root.append(h("section", { class: "screen-header" }, h("h1", {}, "Explorer")), panel(null, form), h("div", { class: "split" }, out, detail));

  function search() {
    const s = new URLSearchParams();
    for (const [name, el] of Object.entries(fields)) {
      if (name === "topic" || !el.value) continue;
      s.set(name, name === "since" ? isoOf(el.value) : el.value);
    }
    return s;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });

  function show(record) {
    detail.replaceChildren(
      panel(
        `${record.event_type || "undecodable"} · ${record.position}`,
        h(
          "dl",
          { class: "kv" },
          h("dt", {}, "Position"),
          h("dd", { class: "mono" }, record.position),
          h("dt", {}, "Timestamp"),
          h("dd", {}, record.timestamp),
          h("dt", {}, "Key"),
          h("dd", { class: "mono" }, record.key ?? "(none)"),
          h("dt", {}, "Flow"),
          h("dd", {}, flowLink(record.correlation_id || record.event_id)),
        ),
        table(
          [{ label: "Header" }, { label: "Value" }],
          record.headers.map((x) => [h("span", { class: "mono" }, x.key), h("span", { class: "mono" }, x.value ?? "")]),
          { empty: "No headers." },
        ),
        record.event ? code(record.event, "explorer-event") : problem(record.error || "undecodable"),
      ),
    );
  }

  async function load() {
    out.replaceChildren(h("p", { class: "muted" }, "Reading…"));
    try {
      const data = await getJSON(`v1/console/topics/${encodeURIComponent(fields.topic.value)}/records?${search()}`, ctx.token);
      out.replaceChildren(
        panel(
          `${data.topic}: ${data.matched} of ${data.scanned} records match`,
          table(
            [{ label: "Position" }, { label: "Time" }, { label: "Type" }, { label: "Key" }, { label: "Event id" }, { label: "Flow" }],
            data.records.map((r) => [h("span", { class: "mono" }, `${r.partition}/${r.offset}`), clock(r.timestamp), r.event_type || "?", h("span", { class: "mono" }, r.key ?? ""), h("span", { class: "mono" }, short(r.event_id)), flowLink(r.correlation_id || r.event_id)]),
            {
              testid: "explorer-table",
              empty: "No record matches.",
              rowAttrs: (i) => ({ class: "clickable", "data-testid": "explorer-row", onclick: () => show(data.records[i]) }),
            },
          ),
        ),
      );
      ctx.refreshed();
    } catch (error) {
      out.replaceChildren(problem(error.message));
    }
  }

  load();
  return { unmount() {} };
}
