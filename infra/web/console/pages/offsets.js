// #/offsets (operator): reset a group's committed offsets on one of its topics to the earliest or latest record, a
// time or an offset; a dry run shows each partition's move, then a confirmation applies it. Only while the group
// has no members: the gateway says so otherwise (409).

import { getJSON, postJSON } from "../../api.js";
import { count, h } from "../../dom.js";
import { isoOf, labelled, panel, problem, select, table } from "../kit.js";

export function mountOffsets(root, ctx) {
  const form = h("form", { class: "filters", "data-testid": "offsets-form" }, h("p", { class: "muted" }, "Loading groups…"));
  const out = h("div", { "data-testid": "offsets-result" });
  root.append(
    h("section", { class: "screen-header" }, h("h1", {}, "Offsets")),
    panel(
      null,
      h("p", { class: "muted" }, "Move a stopped group's position on a topic. Stop the group's consumers first: a group with members is refused."),
      ctx.me.may_operate ? null : h("p", { class: "notice notice-warning", "data-testid": "read-only" }, "Read-only: resetting offsets needs the operator role."),
      form,
    ),
    out,
  );

  async function start() {
    let overview;
    try {
      overview = await getJSON("v1/console/overview", ctx.token);
    } catch (error) {
      form.replaceChildren(problem(error.message));
      return;
    }
    const groups = overview.groups;
    if (!groups.length) {
      form.replaceChildren(h("p", { class: "muted" }, "No consumer groups are known to this gateway."));
      return;
    }
    const group = select("group", groups.map((g) => g.name), ctx.params.get("group") || groups[0].name, { "data-testid": "offsets-group" });
    const topic = h("select", { name: "topic", "data-testid": "offsets-topic" });
    const to = select("to", [["earliest", "earliest"], ["latest", "latest"], ["time", "a time"], ["offset", "an offset"]], "earliest", { "data-testid": "offsets-to" });
    const value = h("input", { name: "value", placeholder: "offset", "data-testid": "offsets-value" });
    const time = h("input", { name: "time", type: "datetime-local", hidden: true, "data-testid": "offsets-time" });
    const partition = h("input", { name: "partition", type: "number", min: 0, placeholder: "all", "data-testid": "offsets-partition" });

    async function topics() {
      try {
        const detail = await getJSON(`v1/console/groups/${encodeURIComponent(group.value)}`, ctx.token);
        topic.replaceChildren(...detail.topics.map((t) => h("option", { value: t }, t)));
        out.replaceChildren(detail.members.length ? problem(`${group.value} has ${detail.members.length} member(s) (${detail.state}): stop its consumers before resetting.`, "offsets-busy") : "");
      } catch (error) {
        out.replaceChildren(problem(error.message));
      }
    }
    function modes() {
      value.hidden = to.value !== "offset";
      time.hidden = to.value !== "time";
    }
    group.addEventListener("change", topics);
    to.addEventListener("change", modes);
    modes();
    form.replaceChildren(
      labelled("Group", group),
      labelled("Topic", topic),
      labelled("Reset to", to),
      labelled("Value", h("span", {}, value, time)),
      labelled("Partition", partition),
      h("button", { type: "submit", class: "button primary", "data-testid": "offsets-dry-run" }, "Dry run…"),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { topic: topic.value, to: to.value, dry_run: true };
      if (to.value === "offset") body.value = value.value;
      if (to.value === "time") body.value = isoOf(time.value);
      if (partition.value) body.partition = Number(partition.value);
      await run(group.value, body);
    });
    await topics();
  }

  async function run(group, body) {
    out.replaceChildren(h("p", { class: "muted" }, body.dry_run ? "Dry run…" : "Committing…"));
    let plan;
    try {
      plan = await postJSON(`v1/console/groups/${encodeURIComponent(group)}/offsets`, body, ctx.token);
    } catch (error) {
      out.replaceChildren(problem(error.message, "offsets-error"));
      out.dataset.status = String(error.status);
      return;
    }
    const apply = h(
      "button",
      { type: "button", class: "button primary", "data-testid": "offsets-apply", onclick: () => run(group, { ...body, dry_run: false }) },
      "Apply this reset",
    );
    out.replaceChildren(
      panel(
        plan.dry_run ? `Dry run: ${plan.group} on ${plan.topic} to ${plan.to}` : `Done: ${plan.group} on ${plan.topic} reset to ${plan.to}`,
        table(
          [{ label: "Partition", num: true }, { label: "Committed now", num: true }, { label: "New offset", num: true }, { label: "First", num: true }, { label: "End", num: true }, { label: "Lag after", num: true }],
          plan.partitions.map((x) => [String(x.partition), x.current === null ? "–" : count(x.current), h("strong", {}, count(x.target)), count(x.low), count(x.end), count(x.lag_after)]),
          { testid: "offsets-plan" },
        ),
        plan.dry_run ? h("div", { class: "toolbar" }, apply) : h("p", { class: "notice notice-info", "data-testid": "offsets-done" }, "Committed. The group starts there when its consumers start."),
      ),
    );
  }

  start();
  return { unmount() {} };
}
