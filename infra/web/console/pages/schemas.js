// #/schemas: the catalog: each type's topic, key, Avro writer schema, fingerprint, an example payload and the
// groups that handle it.

import { getJSON } from "../../api.js";
import { h } from "../../dom.js";
import { code, panel, problem, table } from "../kit.js";

export function mountSchemas(root, ctx) {
  const list = h("div", { "data-testid": "schemas" }, h("p", { class: "muted" }, "Loading…"));
  const detail = h("div", { "data-testid": "schema-detail" });
  root.append(h("section", { class: "screen-header" }, h("h1", {}, "Schemas")), h("div", { class: "split" }, list, detail));

  function show(item) {
    detail.replaceChildren(
      panel(
        item.event_type,
        h(
          "dl",
          { class: "kv" },
          h("dt", {}, "Topic"),
          h("dd", { class: "mono" }, item.topic),
          h("dt", {}, "Key field"),
          h("dd", { class: "mono" }, item.key_field),
          h("dt", {}, "Fingerprint"),
          h("dd", { class: "mono", "data-testid": "schema-fingerprint" }, item.fingerprint),
          h("dt", {}, "Handled by"),
          h("dd", {}, item.groups.join(", ") || "no known group"),
        ),
        h("h3", {}, "Example payload"),
        code(item.example, "schema-example"),
        h("h3", {}, "Avro writer schema"),
        code(item.schema, "schema-avro"),
      ),
    );
  }

  getJSON("v1/console/schemas", ctx.token)
    .then((data) => {
      list.replaceChildren(
        panel(
          `${data.schemas.length} event types`,
          table(
            [{ label: "Event type" }, { label: "Topic" }, { label: "Fingerprint" }, { label: "Groups" }],
            data.schemas.map((x) => [h("strong", {}, x.event_type), x.topic, h("span", { class: "mono" }, x.fingerprint.slice(0, 16)), x.groups.join(", ")]),
            { testid: "schema-table", rowAttrs: (i) => ({ class: "clickable", "data-testid": "schema-row", onclick: () => show(data.schemas[i]) }) },
          ),
        ),
      );
      if (data.schemas.length) show(data.schemas[0]);
      ctx.refreshed();
    })
    .catch((error) => list.replaceChildren(problem(error.message)));
  return { unmount() {} };
}
