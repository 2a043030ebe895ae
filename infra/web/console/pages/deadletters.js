// #/dead-letters: filter (group, type, error type, topic, time), inspect one (decoded event, error, traceback,
// headers, key, bytes), replay one, a selection or the whole filter result: a dry run first, showing exactly what
// would be sent, then a confirmation, then the outcome. Replayed ones are marked; the server skips them unless
// "again" is ticked (the rules of `eventbus dlq replay`). Only the operator role replays (admin: 403).

import { getJSON, postJSON } from "../../api.js";
import { count, h, when } from "../../dom.js";
import { ago, code, flowLink, hexdump, isoOf, labelled, panel, pill, problem, select, table } from "../kit.js";

const REPLAY_CHUNK = 100;
const FILTERS = ["group", "type", "error", "topic", "since", "until", "replayed"];

export function mountDeadLetters(root, ctx) {
  const params = ctx.params;
  const chosen = new Set();
  let items = [];
  let current = null;
  const input = (name, attrs = {}) =>
    h("input", { name, value: params.get(name) || "", "data-testid": `filter-${name}`, ...attrs });
  const groupSelect = select("group", [["", "any group"]], params.get("group"), { "data-testid": "filter-group" });
  const fields = {
    group: groupSelect,
    type: input("type", { placeholder: "session:*" }),
    error: input("error", { placeholder: "Insufficient* or text" }),
    topic: input("topic", { placeholder: "session" }),
    since: input("since", { type: "datetime-local" }),
    until: input("until", { type: "datetime-local" }),
    replayed: select(
      "replayed",
      [
        ["", "all"],
        ["false", "not replayed"],
        ["true", "replayed"],
      ],
      params.get("replayed"),
      { "data-testid": "filter-replayed" },
    ),
  };
  const again = h("input", { type: "checkbox", name: "again", "data-testid": "replay-again" });
  const undecodable = h("input", { type: "checkbox", name: "include_undecodable", "data-testid": "replay-undecodable" });
  const form = h(
    "form",
    { class: "filters", "data-testid": "dead-letter-filters" },
    labelled("Group", fields.group),
    labelled("Event type", fields.type),
    labelled("Error type or text", fields.error),
    labelled("Original topic", fields.topic),
    labelled("Since", fields.since),
    labelled("Until", fields.until),
    labelled("Replayed", fields.replayed),
    h("button", { type: "submit", class: "button primary", "data-testid": "filter-apply" }, "Filter"),
  );
  const listBox = h("div", { "data-testid": "dead-letter-list" }, h("p", { class: "muted" }, "Loading…"));
  const detailBox = h("div", { "data-testid": "dead-letter-detail" }, h("p", { class: "muted" }, "Pick a dead letter to inspect it."));
  const replayBox = h("div", { "data-testid": "replay-box" });
  const summary = h("p", { class: "muted", "data-testid": "dead-letter-count" });
  const selectionButton = h(
    "button",
    { type: "button", class: "button", "data-testid": "replay-selected", disabled: true, onclick: () => dryRun({ letters: [...chosen] }) },
    "Replay selected…",
  );
  const filterButton = h(
    "button",
    { type: "button", class: "button", "data-testid": "replay-filter", onclick: () => dryRun({ filter: query() }) },
    "Replay all matching…",
  );
  const options = h(
    "div",
    { class: "toolbar" },
    selectionButton,
    filterButton,
    h("label", { class: "check" }, again, " replay ones replayed before too"),
    h("label", { class: "check" }, undecodable, " include undecodable"),
    ctx.me.may_operate ? null : h("span", { class: "muted", "data-testid": "read-only" }, "Read-only: replaying needs the operator role."),
  );
  root.append(
    h("section", { class: "screen-header" }, h("h1", {}, "Dead letters")),
    panel(null, form, summary, options, replayBox),
    h("div", { class: "split" }, panel("Dead letters", listBox), panel("Dead letter", detailBox)),
  );

  function query() {
    const out = {};
    for (const name of ["group", "type", "error", "topic"]) if (fields[name].value) out[name] = fields[name].value;
    for (const name of ["since", "until"]) if (fields[name].value) out[name] = isoOf(fields[name].value);
    return out;
  }

  function address() {
    const search = new URLSearchParams();
    for (const name of FILTERS) if (fields[name].value) search.set(name, fields[name].value);
    return search;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    history.replaceState(null, "", `#/dead-letters?${address()}`);
    load();
  });

  function updateSelection() {
    selectionButton.disabled = chosen.size === 0;
    selectionButton.textContent = chosen.size ? `Replay ${chosen.size} selected…` : "Replay selected…";
  }

  function renderList() {
    const rows = items.map((item) => {
      const box = h("input", {
        type: "checkbox",
        "aria-label": `select ${item.location}`,
        "data-testid": "dead-letter-check",
        checked: chosen.has(item.location),
        onclick: (event) => event.stopPropagation(),
        onchange: (event) => {
          if (event.target.checked) chosen.add(item.location);
          else chosen.delete(item.location);
          updateSelection();
        },
      });
      return [
        box,
        h("span", { title: item.last_failure_at }, ago(item.last_failure_at)),
        item.group,
        item.event_type || h("em", {}, "undecodable"),
        h("span", { title: item.error }, item.error_type),
        count(item.attempts),
        item.replayed ? pill("replayed", "replayed") : pill("pending", "warn"),
      ];
    });
    listBox.replaceChildren(
      table(
        [{ label: "" }, { label: "Failed" }, { label: "Group" }, { label: "Event" }, { label: "Error" }, { label: "Attempts", num: true }, { label: "" }],
        rows,
        {
          testid: "dead-letter-table",
          empty: "No dead letter matches.",
          rowAttrs: (index) => ({
            class: items[index].location === current ? "clickable selected" : "clickable",
            "data-testid": "dead-letter-row",
            dataset: {
              location: items[index].location,
              eventId: items[index].event_id,
              group: items[index].group,
              replayed: items[index].replayed ? "true" : "false",
            },
            onclick: () => inspect(items[index].location),
          }),
        },
      ),
    );
  }

  async function load() {
    const search = new URLSearchParams(query());
    if (fields.replayed.value) search.set("replayed", fields.replayed.value);
    try {
      const data = await getJSON(`v1/console/dead-letters?${search}`, ctx.token);
      items = data.items;
      const known = new Set(items.map((item) => item.location));
      for (const location of [...chosen]) if (!known.has(location)) chosen.delete(location);
      const previous = fields.group.value || params.get("group") || "";
      fields.group.replaceChildren(
        ...[["", "any group"], ...data.groups.map((g) => [g, g])].map(([v, t]) => h("option", { value: v, selected: v === previous }, t)),
      );
      summary.textContent = `${data.count} dead letter${data.count === 1 ? "" : "s"} match · error types: ${data.error_types.join(", ") || "none"}`;
      summary.dataset.count = String(data.count);
      renderList();
      updateSelection();
      ctx.refreshed();
    } catch (error) {
      listBox.replaceChildren(problem(error.message));
    }
  }

  async function inspect(location) {
    current = location;
    renderList();
    const [partition, offset] = location.split("/");
    try {
      const d = await getJSON(`v1/console/dead-letters/${partition}/${offset}`, ctx.token);
      detailBox.replaceChildren(
        h(
          "dl",
          { class: "kv", "data-testid": "dead-letter-facts", dataset: { location } },
          h("dt", {}, "Dead letter"),
          h("dd", { class: "mono" }, `system ${d.location}`),
          h("dt", {}, "Group"),
          h("dd", {}, d.group),
          h("dt", {}, "Original"),
          h("dd", { class: "mono" }, d.original),
          h("dt", {}, "Event"),
          h("dd", {}, d.event_type || "undecodable", " ", h("span", { class: "mono muted" }, d.event_id || "")),
          h("dt", {}, "Flow"),
          h("dd", {}, flowLink(d.correlation_id || (d.event && d.event.metadata && (d.event.metadata.correlation_id || d.event.metadata.event_id)))),
          h("dt", {}, "Key"),
          h("dd", { class: "mono" }, d.key ?? "(none)", " ", h("span", { class: "muted" }, d.key_hex ? `hex ${d.key_hex}` : "")),
          h("dt", {}, "Attempts"),
          h("dd", {}, `${d.attempts} (first ${when(d.first_failure_at)}, last ${when(d.last_failure_at)})`),
          h("dt", {}, "Replayed"),
          h("dd", { "data-testid": "detail-replayed" }, d.replayed ? `to ${d.replayed.replayed_to} at ${when(d.replayed.replayed_at)} (${d.replayed.times}×)` : "no"),
        ),
        h("h3", {}, "Error"),
        h("p", { "data-testid": "detail-error" }, h("strong", {}, d.error_type), ": ", d.error_message),
        d.traceback ? h("details", {}, h("summary", {}, "Traceback"), code(d.traceback, "detail-traceback")) : null,
        h("h3", {}, d.event ? "Decoded original event" : "Original event (not decodable)"),
        d.event ? code(d.event, "detail-event") : problem(d.decode_error || "not decodable", "detail-decode-error"),
        h("h3", {}, "Headers"),
        table(
          [{ label: "Header" }, { label: "Value" }],
          d.headers.map((header) => [h("span", { class: "mono" }, header.key), h("span", { class: "mono" }, header.value ?? "")]),
          { testid: "detail-headers", empty: "No headers." },
        ),
        h("h3", {}, `Raw bytes (${d.value_bytes})`),
        hexdump(d.value_hex, "detail-hex"),
        h(
          "div",
          { class: "toolbar" },
          h("button", { type: "button", class: "button primary", "data-testid": "replay-one", onclick: () => dryRun({ letters: [d.location] }) }, "Replay this one…"),
        ),
      );
    } catch (error) {
      detailBox.replaceChildren(problem(error.message));
    }
  }

  function replayOptions() {
    return { again: again.checked, include_undecodable: undecodable.checked };
  }

  async function dryRun(selection) {
    replayBox.replaceChildren(h("p", { class: "muted" }, "Dry run…"));
    let plan;
    try {
      plan = await postJSON("v1/console/dead-letters/replay", { ...selection, ...replayOptions(), dry_run: true }, ctx.token);
    } catch (error) {
      replayBox.replaceChildren(problem(`${error.status === 403 ? "Forbidden: " : ""}${error.message}`, "replay-error"));
      replayBox.dataset.status = String(error.status);
      return;
    }
    const batches = plan.replayed.map((entry) => entry.dead_letters);
    const skipped = [
      plan.skipped_replayed ? `${plan.skipped_replayed} replayed before (tick “again” to send them again)` : null,
      plan.skipped_undecodable ? `${plan.skipped_undecodable} undecodable` : null,
    ].filter(Boolean);
    const confirm = h(
      "button",
      {
        type: "button",
        class: "button primary",
        "data-testid": "replay-confirm",
        disabled: plan.count === 0,
        onclick: () => send(batches, confirm),
      },
      `Send ${plan.count} record${plan.count === 1 ? "" : "s"}`,
    );
    replayBox.replaceChildren(
      h(
        "section",
        { class: "panel dialog", "data-testid": "replay-dry-run", dataset: { count: plan.count } },
        h("h2", {}, "Dry run: exactly what would be sent"),
        h("p", {}, `${plan.count} record${plan.count === 1 ? "" : "s"} for ${plan.dead_letters} dead letter${plan.dead_letters === 1 ? "" : "s"}.`, skipped.length ? ` Left out: ${skipped.join(", ")}.` : ""),
        table(
          [{ label: "Original" }, { label: "To topic" }, { label: "Key" }, { label: "Event" }, { label: "Bytes", num: true }, { label: "SHA-256" }, { label: "Groups" }, { label: "Headers" }],
          plan.replayed.map((entry) => [
            h("span", { class: "mono" }, entry.original),
            entry.topic,
            h("span", { class: "mono" }, entry.key ?? ""),
            entry.event_type || "undecodable",
            count(entry.value_bytes),
            h("span", { class: "mono", title: entry.value_sha256 }, entry.value_sha256.slice(0, 12)),
            entry.groups.join(", "),
            h("span", { class: "mono" }, entry.headers.map(([k, v]) => `${k}=${v}`).join("; ")),
          ]),
          { testid: "replay-plan", empty: "Nothing would be sent." },
        ),
        h(
          "div",
          { class: "toolbar" },
          confirm,
          h("button", { type: "button", class: "button ghost", "data-testid": "replay-cancel", onclick: () => replayBox.replaceChildren() }, "Cancel"),
        ),
      ),
    );
  }

  // A bulk replay goes in requests of REPLAY_CHUNK records, so the page shows its progress and a failure stops it
  // with what was sent so far said; each request follows the rules of `eventbus dlq replay`.
  async function send(batches, button) {
    button.disabled = true;
    button.textContent = "Replaying…";
    const total = batches.length;
    const bar = h("progress", { max: total, value: 0, "data-testid": "replay-progress" });
    const said = h("span", { "data-testid": "replay-progress-text" }, `0 of ${total} sent`);
    const progress = h("p", { class: "progress" }, bar, " ", said);
    replayBox.append(progress);
    const outcome = { count: 0, dead_letters: 0, skipped_replayed: 0, replayed: [] };
    let failure = null;
    for (let start = 0; start < total; start += REPLAY_CHUNK) {
      const letters = batches.slice(start, start + REPLAY_CHUNK).flat();
      try {
        // exactly the dead letters of the dry run; the server still skips any replayed meanwhile (unless "again")
        const part = await postJSON("v1/console/dead-letters/replay", { letters, ...replayOptions(), dry_run: false }, ctx.token);
        outcome.count += part.count;
        outcome.dead_letters += part.dead_letters;
        outcome.skipped_replayed += part.skipped_replayed || 0;
        outcome.replayed.push(...part.replayed);
      } catch (error) {
        failure = error;
        break;
      }
      const done = Math.min(total, start + REPLAY_CHUNK);
      bar.value = done;
      said.textContent = `${done} of ${total} sent`;
    }
    replayBox.replaceChildren(
      progress,
      failure ? problem(`Stopped after ${outcome.count} of ${total}: ${failure.message}`, "replay-error") : null,
      h(
        "section",
        { class: "panel", "data-testid": "replay-outcome", dataset: { count: outcome.count } },
        h("h2", {}, failure ? "Replayed in part" : "Replayed"),
        h("p", { class: "notice notice-info" }, `${outcome.count} record${outcome.count === 1 ? "" : "s"} sent for ${outcome.dead_letters} dead letter${outcome.dead_letters === 1 ? "" : "s"}${outcome.skipped_replayed ? `; ${outcome.skipped_replayed} skipped: replayed meanwhile` : ""}.`),
        table(
          [{ label: "Original" }, { label: "Sent to" }, { label: "Dead letters" }],
          outcome.replayed.map((entry) => [entry.original, h("span", { class: "mono" }, entry.replayed_to), entry.dead_letters.join(", ")]),
          { testid: "replay-result" },
        ),
      ),
    );
    if (failure) replayBox.dataset.status = String(failure.status);
    chosen.clear();
    await load();
    if (current) await inspect(current);
  }

  const timer = setInterval(() => {
    if (!replayBox.querySelector('[data-testid="replay-dry-run"]')) load();
  }, 3000);
  load();
  return {
    unmount() {
      clearInterval(timer);
    },
  };
}
