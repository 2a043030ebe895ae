// #/coaches: the original CoachMonitoring. Each coach:status_changed sets the coach's status; coach:rating_updated
// shows the rating, coach:profile_updated the display name. Coaches see themselves, admins every coach.

import { clock, h, initials, timeEl } from "../dom.js";

const ORDER = ["online", "busy", "away", "offline", "unknown"];
const LABELS = { online: "Online", busy: "In a session", away: "Away", offline: "Offline", unknown: "Unknown" };

export function mountCoaches(root, ctx) {
  const { me } = ctx;
  const grid = h("ul", { class: "coach-grid", role: "list", "data-testid": "coaches", "aria-label": "Coaches" });
  const changes = h("ol", { class: "activity", "data-testid": "coach-changes", "aria-label": "Status changes" });
  const tally = h("ul", { class: "tally", role: "list", "data-testid": "coach-summary", "aria-label": "Summary" });
  const empty = h(
    "p",
    { class: "empty-state", "data-testid": "coaches-empty" },
    me.is_admin
      ? "No status change yet. Coaches appear here as soon as their status changes."
      : "No status change yet. Your status appears here as soon as it changes.",
  );
  const coaches = new Map();

  function showTally() {
    const counts = Object.fromEntries(ORDER.map((status) => [status, 0]));
    for (const entry of coaches.values()) counts[entry.status] = (counts[entry.status] || 0) + 1;
    tally.replaceChildren(
      ...ORDER.filter((status) => counts[status] || status === "online").map((status) =>
        h(
          "li",
          { class: `tally-item status-${status}`, dataset: { status, count: counts[status] } },
          h("span", { class: "dot", "aria-hidden": "true" }),
          h("strong", {}, counts[status]),
          ` ${LABELS[status]}`,
        ),
      ),
    );
  }

  function entryFor(coachId) {
    let entry = coaches.get(coachId);
    if (entry) return entry;
    const status = h("span", { class: "status", "data-testid": "coach-status" });
    const detail = h("p", { class: "card-meta", "data-testid": "coach-detail" });
    const rating = h("p", { class: "rating", "data-testid": "coach-rating", hidden: true });
    const name = h("h3", { class: "card-title", "data-testid": "coach-name" }, coachId);
    const avatar = h("span", { class: "avatar coach", "aria-hidden": "true" }, initials(coachId));
    const li = h(
      "li",
      { class: "card coach-card", "data-testid": "coach", dataset: { coachId, status: "unknown" } },
      avatar,
      h("div", { class: "card-body" }, name, status, detail, rating),
    );
    entry = { li, status: "unknown", statusEl: status, detail, rating, name, avatar, label: coachId };
    coaches.set(coachId, entry);
    grid.append(li);
    empty.hidden = true;
    return entry;
  }

  function apply(item) {
    const { type, data } = item;
    if (type === "coach:status_changed") {
      const entry = entryFor(data.coach_id);
      entry.status = data.new_status;
      entry.li.dataset.status = data.new_status;
      entry.statusEl.className = `status status-${data.new_status}`;
      entry.statusEl.replaceChildren(
        h("span", { class: "dot", "aria-hidden": "true" }),
        LABELS[data.new_status] || data.new_status,
      );
      entry.detail.replaceChildren(`was ${LABELS[data.old_status] || data.old_status} · since `, timeEl(item.at));
      changes.prepend(
        h(
          "li",
          {
            class: "activity-row",
            "data-testid": "coach-change",
            dataset: { seq: item.seq, eventId: data.metadata?.event_id, coachId: data.coach_id },
          },
          h("span", { class: "row-time" }, clock(item.at)),
          h("span", { class: `pill status-${data.new_status}` }, data.new_status),
          h("span", { class: "row-text" }, `${entry.label}: ${data.old_status} → ${data.new_status}`),
        ),
      );
      showTally();
    } else if (type === "coach:profile_updated" && data.display_name) {
      const entry = entryFor(data.coach_id);
      entry.label = data.display_name;
      entry.name.replaceChildren(data.display_name, " ", h("span", { class: "muted id" }, data.coach_id));
      entry.avatar.textContent = initials(data.display_name);
    } else if (type === "coach:rating_updated") {
      const entry = entryFor(data.coach_id);
      const stars = "★".repeat(Math.round(data.new_rating)) + "☆".repeat(5 - Math.round(data.new_rating));
      entry.rating.hidden = false;
      entry.rating.replaceChildren(
        h("span", { class: "stars", "aria-hidden": "true" }, stars),
        ` ${Number(data.new_rating).toFixed(1)} (${data.review_count} reviews)`,
      );
      entry.rating.setAttribute("aria-label", `Rated ${Number(data.new_rating).toFixed(1)} of 5`);
    }
  }

  showTally();
  root.append(
    h(
      "section",
      { class: "screen", "aria-labelledby": "coaches-title" },
      h(
        "header",
        { class: "screen-header" },
        h("h1", { id: "coaches-title" }, me.is_admin ? "Coach monitoring" : "My status"),
        h("p", { class: "lead" }, "Availability as it changes, live."),
      ),
      tally,
      h(
        "div",
        { class: "columns" },
        h("div", { class: "column wide" }, h("h2", {}, "Coaches"), empty, grid),
        h("div", { class: "column" }, h("h2", {}, "Changes"), changes),
      ),
    ),
  );
  return { apply };
}
