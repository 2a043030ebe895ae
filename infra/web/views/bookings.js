// #/bookings: the original SessionBooking, live. session:created is a success, session:creation_failed an error
// with its reason; later session:* events update the booking. Every event also gets its own row in the activity
// list (nothing merged, nothing dropped: a row per event the gateway delivered).

import { clock, h, initials, timeEl, when } from "../dom.js";

const STATUS = {
  "session:created": { status: "confirmed", label: "Confirmed" },
  "session:creation_failed": { status: "failed", label: "Failed" },
  "session:updated": { status: "updated", label: "Updated" },
  "session:cancelled": { status: "cancelled", label: "Cancelled" },
  "session:completed": { status: "completed", label: "Completed" },
};

function coachName(data) {
  return data.coach_name || data.coach_id || "a coach";
}

function summary(type, data) {
  switch (type) {
    case "session:created":
      return `Booked: ${data.session_type} with ${coachName(data)} on ${when(data.scheduled_at)}`;
    case "session:creation_failed":
      return `Booking failed: ${data.error}`;
    case "session:updated": {
      const changed = (data.changed_fields || []).join(", ") || "details";
      const moved = data.scheduled_at ? ` (now ${when(data.scheduled_at)})` : "";
      return `Updated ${changed}${moved}`;
    }
    case "session:cancelled":
      return `Cancelled by ${data.cancelled_by}${data.reason ? `: ${data.reason}` : ""}`;
    case "session:completed":
      return `Completed${data.duration_minutes ? ` after ${data.duration_minutes} min` : ""}; ${data.cost_credits} credits`;
    default:
      return type;
  }
}

export function mountBookings(root, ctx) {
  const { me } = ctx;
  const mine = me.roles.includes("user") && !me.is_admin;
  const banner = h("div", {
    class: "status-banner",
    role: "status",
    "aria-live": "polite",
    "data-testid": "booking-status",
    dataset: { state: "idle" },
  });
  const bookings = h("ul", { class: "bookings", role: "list", "data-testid": "bookings", "aria-label": "Bookings" });
  const activity = h("ol", { class: "activity", "data-testid": "activity", "aria-label": "Booking activity" });
  const empty = h(
    "p",
    { class: "empty-state", "data-testid": "bookings-empty" },
    "No booking yet. Book a session and it appears here the moment it is confirmed.",
  );
  const cards = new Map();

  function showBanner(state, title, detail) {
    banner.dataset.state = state;
    banner.replaceChildren(
      h("span", { class: "banner-icon", "aria-hidden": "true" }, state === "success" ? "✓" : state === "error" ? "!" : "•"),
      h("span", {}, h("strong", { "data-testid": "booking-status-title" }, title), detail ? ` ${detail}` : ""),
    );
  }

  showBanner("idle", "Waiting for your bookings.", "Their status shows here live.");

  function card(data, item) {
    const existing = cards.get(data.session_id);
    if (existing) return existing;
    const title = h("h3", { class: "card-title" });
    const meta = h("p", { class: "card-meta" });
    const badge = h("span", { class: "pill", "data-testid": "booking-badge" });
    const reason = h("p", { class: "reason", "data-testid": "booking-reason", hidden: true });
    const history = h("ol", { class: "history", "aria-label": "Changes" });
    const avatar = h("span", { class: "avatar coach", "aria-hidden": "true" });
    const li = h(
      "li",
      { class: "card booking", "data-testid": "booking", dataset: { sessionId: data.session_id, firstSeq: item.seq } },
      avatar,
      h("div", { class: "card-body" }, title, meta, reason, history),
      badge,
    );
    const entry = { li, title, meta, badge, reason, history, avatar, data: {} };
    cards.set(data.session_id, entry);
    bookings.prepend(li);
    empty.hidden = true;
    return entry;
  }

  function update(item) {
    const { type, data } = item;
    const entry = card(data, item);
    const known = { ...entry.data };
    for (const [key, value] of Object.entries(data)) {
      if (value !== null && value !== undefined && key !== "metadata") known[key] = value;
    }
    entry.data = known;
    const { status, label } = STATUS[type];
    entry.li.dataset.status = status;
    entry.badge.className = `pill pill-${status}`;
    entry.badge.textContent = label;
    entry.avatar.textContent = initials(coachName(known));
    entry.title.textContent = `${known.session_type || "Session"} with ${coachName(known)}`;
    const parts = [];
    if (known.scheduled_at) parts.push(when(known.scheduled_at));
    if (known.duration_minutes) parts.push(`${known.duration_minutes} min`);
    if (known.cost_credits !== undefined) parts.push(`${known.cost_credits} credits`);
    if (!mine && known.user_id) parts.push(`client ${known.client_name || known.user_id}`);
    parts.push(`#${known.session_id}`);
    entry.meta.textContent = parts.join(" · ");
    if (type === "session:creation_failed" || type === "session:cancelled") {
      entry.reason.hidden = false;
      entry.reason.textContent =
        type === "session:creation_failed" ? `Reason: ${data.error}` : summary(type, data);
    } else if (type === "session:created") {
      entry.reason.hidden = true;
    }
    entry.history.append(h("li", {}, timeEl(item.at), ` ${summary(type, data)}`));
  }

  function apply(item) {
    if (!STATUS[item.type]) return;
    const { type, data } = item;
    update(item);
    activity.prepend(
      h(
        "li",
        {
          class: `activity-row row-${STATUS[type].status}`,
          "data-testid": "event-row",
          dataset: {
            seq: item.seq,
            eventId: data.metadata?.event_id,
            eventType: type,
            sessionId: data.session_id,
          },
        },
        h("span", { class: "row-time" }, clock(item.at)),
        h("span", { class: `pill pill-${STATUS[type].status}` }, type),
        h("span", { class: "row-text" }, summary(type, data)),
      ),
    );
    if (type === "session:created") {
      showBanner("success", "Session booked!", summary(type, data).replace(/^Booked: /, ""));
    } else if (type === "session:creation_failed") {
      showBanner("error", "Booking failed.", data.error);
    }
  }

  root.append(
    h(
      "section",
      { class: "screen", "aria-labelledby": "bookings-title" },
      h(
        "header",
        { class: "screen-header" },
        h("h1", { id: "bookings-title" }, mine ? "My bookings" : "Bookings"),
        h(
          "p",
          { class: "lead" },
          mine ? "Your sessions, as the marketplace confirms them." : "Every booking you may see, live.",
        ),
      ),
      banner,
      h(
        "div",
        { class: "columns" },
        h("div", { class: "column wide" }, h("h2", {}, "Sessions"), empty, bookings),
        h("div", { class: "column" }, h("h2", {}, "Activity"), activity),
      ),
    ),
  );
  return { apply };
}
