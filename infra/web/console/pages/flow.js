// #/flow?id=<correlation id>: every event of one flow across all topics in causal order (causation ids as a
// tree), which group handled each and when, and any dead letter in it.

import { getJSON } from "../../api.js";
import { clock, h, when } from "../../dom.js";
import { code, panel, pill, problem, short, table } from "../kit.js";

export function mountFlow(root, ctx) {
  const idInput = h("input", {
    name: "id",
    value: ctx.params.get("id") || "",
    placeholder: "a correlation id (a booking's first event id)",
    size: 44,
    "data-testid": "flow-id",
  });
  const form = h(
    "form",
    { class: "filters" },
    h("label", {}, "Correlation id", idInput),
    h("button", { type: "submit", class: "button primary", "data-testid": "flow-go" }, "Follow"),
  );
  const out = h("div", { "data-testid": "flow" });
  const detail = h("div", { "data-testid": "flow-detail" });
  root.append(
    h("section", { class: "screen-header" }, h("h1", {}, "Flow")),
    panel(null, h("p", { class: "muted" }, "Every event of one flow (a booking, a payment) across all topics and groups, cause before effect."), form),
    out,
    detail,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ctx.navigate(`flow?id=${encodeURIComponent(idInput.value.trim())}`);
  });

  async function load(id) {
    out.replaceChildren(h("p", { class: "muted" }, "Reading every topic…"));
    let data;
    try {
      data = await getJSON(`v1/console/flow/${encodeURIComponent(id)}`, ctx.token);
    } catch (error) {
      out.replaceChildren(problem(error.message));
      return;
    }
    const rows = data.events.map((e) => [
      h(
        "span",
        { class: "tree-cell" },
        h("span", { class: "tree-indent", "aria-hidden": "true" }, e.depth ? `${"   ".repeat(e.depth - 1)}└─ ` : ""),
        h("strong", { "data-testid": "flow-type" }, e.event_type),
      ),
      h("span", { title: e.occurred_at }, clock(e.occurred_at)),
      h("span", { class: "mono" }, e.position),
      h("span", { class: "mono", title: e.event_id }, short(e.event_id)),
      h("span", { class: "mono muted", title: e.causation_id || "" }, short(e.causation_id) || "–"),
      e.handled_by.length
        ? h("span", { class: "chips" }, ...e.handled_by.map((x) => h("span", { class: "chip", title: when(x.at), "data-testid": "flow-handled" }, `${x.group} ${clock(x.at)}`)))
        : h("span", { class: "muted" }, "–"),
      e.dead_letters.length
        ? h(
            "span",
            {},
            ...e.dead_letters.map((dl) =>
              h(
                "a",
                { href: `#/dead-letters?group=${encodeURIComponent(dl.group)}`, title: dl.error, "data-testid": "flow-dead-letter" },
                pill(`${dl.group}: ${dl.error_type}`, "err"),
              ),
            ),
          )
        : "",
    ]);
    out.replaceChildren(
      panel(
        `${data.count} event${data.count === 1 ? "" : "s"}${data.dead_letters ? `, ${data.dead_letters} dead letter${data.dead_letters === 1 ? "" : "s"}` : ""}`,
        table(
          [{ label: "Event (caused by the one above it)" }, { label: "Occurred" }, { label: "Position" }, { label: "Event id" }, { label: "Caused by" }, { label: "Handled by" }, { label: "Dead letters" }],
          rows,
          {
            testid: "flow-table",
            empty: "No event carries this correlation id.",
            rowAttrs: (index) => ({
              class: "clickable tree-row",
              "data-testid": "flow-row",
              dataset: { type: data.events[index].event_type, depth: data.events[index].depth, eventId: data.events[index].event_id },
              onclick: () => detail.replaceChildren(panel(`${data.events[index].event_type} · ${data.events[index].position}`, code(data.events[index].event))),
            }),
          },
        ),
      ),
    );
    out.dataset.loaded = "true";
    ctx.refreshed();
  }

  const id = ctx.params.get("id");
  if (id) load(id);
  return { unmount() {} };
}
