// #/notifications: the user's notifications as they arrive, with the notification group's templates.
//
// notification:requested carries a custom template (title, body, actions) or a type and values: the gateway renders
// it (POST /v1/ui/notifications/render) exactly as the notification group does. notification:sent (one per
// delivery and channel) carries a title: it joins the card of the request it delivers, or gets its own.

import { postJSON } from "../api.js";
import { h, s, timeEl } from "../dom.js";

// Line icons, drawn here (no icon font, no emoji font needed): the templates' icon names.
const ICONS = {
  info: [["circle", { cx: 12, cy: 12, r: 9 }], ["path", { d: "M12 11v5M12 7.5v.5" }]],
  calendar: [["rect", { x: 3, y: 5, width: 18, height: 16, rx: 2 }], ["path", { d: "M3 10h18M8 3v4M16 3v4" }]],
  "calendar-x": [
    ["rect", { x: 3, y: 5, width: 18, height: 16, rx: 2 }],
    ["path", { d: "M3 10h18M8 3v4M16 3v4M10 13l4 4M14 13l-4 4" }],
  ],
  "user-plus": [["circle", { cx: 9, cy: 8, r: 4 }], ["path", { d: "M2 21c0-4 3-6 7-6s7 2 7 6M19 8v6M16 11h6" }]],
  "credit-card": [["rect", { x: 2, y: 5, width: 20, height: 14, rx: 2 }], ["path", { d: "M2 10h20M6 15h4" }]],
  alert: [["path", { d: "M12 3l10 17H2z" }], ["path", { d: "M12 9v5M12 17v.5" }]],
  coins: [
    ["ellipse", { cx: 12, cy: 6, rx: 7, ry: 3 }],
    ["path", { d: "M5 6v6c0 1.7 3.1 3 7 3s7-1.3 7-3V6M5 12v6c0 1.7 3.1 3 7 3s7-1.3 7-3v-6" }],
  ],
  bell: [["path", { d: "M6 16v-5a6 6 0 0 1 12 0v5l2 2H4z" }], ["path", { d: "M10 20a2 2 0 0 0 4 0" }]],
};

function icon(name) {
  const shapes = ICONS[name] || ICONS.bell;
  return s(
    "svg",
    { viewBox: "0 0 24 24", width: 24, height: 24, class: "icon", dataset: { icon: ICONS[name] ? name : "bell" } },
    ...shapes.map(([tag, attrs]) => s(tag, attrs)),
  );
}


const rendered = new Map(); // event id -> Promise of the rendered content (kept across visits to the screen)

function render(data, token) {
  const key = data.metadata?.event_id;
  if (!rendered.has(key)) rendered.set(key, postJSON("v1/ui/notifications/render", data, token));
  return rendered.get(key);
}

export function mountNotifications(root, ctx) {
  const list = h("ul", {
    class: "notifications",
    role: "list",
    "aria-live": "polite",
    "aria-label": "Notifications",
    "data-testid": "notifications",
  });
  const empty = h(
    "p",
    { class: "empty-state", "data-testid": "notifications-empty" },
    "No notification yet. New ones appear here as they arrive.",
  );
  const byRequest = new Map(); // the requesting event's id -> card
  const byNotification = new Map(); // notification_id of notification:sent -> card
  const chosen = h("p", { class: "toast", role: "status", "data-testid": "notification-chosen", hidden: true });

  function card(item, provisional) {
    const badge = h("span", { class: "note-icon", "aria-hidden": "true" }, icon(provisional.icon));
    const title = h("h3", { class: "card-title", "data-testid": "notification-title" }, provisional.title);
    const body = h("p", { class: "note-body", "data-testid": "notification-body" }, provisional.body || "");
    const actions = h("div", { class: "note-actions", "data-testid": "notification-actions" });
    const deliveries = h("ul", { class: "chips", role: "list", "aria-label": "Deliveries" });
    const li = h(
      "li",
      {
        class: "card note",
        "data-testid": "notification",
        dataset: {
          seq: item.seq,
          eventId: item.data.metadata?.event_id,
          eventType: item.type,
          notificationType: item.data.notification_type,
        },
      },
      badge,
      h(
        "div",
        { class: "card-body" },
        h("div", { class: "note-head" }, title, timeEl(item.at)),
        body,
        actions,
        deliveries,
      ),
    );
    list.prepend(li);
    empty.hidden = true;
    const entry = { li, badge, title, body, actions, deliveries };
    fill(entry, provisional);
    return entry;
  }

  function fill(entry, content) {
    entry.badge.replaceChildren(icon(content.icon));
    entry.title.textContent = content.title;
    entry.body.textContent = content.body || "";
    entry.body.hidden = !content.body;
    entry.actions.replaceChildren(
      ...(content.actions || []).map((action) =>
        h(
          "button",
          {
            type: "button",
            class: "button small",
            "data-testid": "notification-action",
            dataset: { action: action.action },
            onclick: () => choose(action, entry),
          },
          action.title,
        ),
      ),
    );
  }

  function choose(action, entry) {
    if (action.action === "view" || action.action === "reschedule") {
      ctx.navigate("bookings");
      return;
    }
    entry.li.dataset.chosen = action.action;
    chosen.hidden = false;
    chosen.textContent = `“${action.title}”: noted for “${entry.title.textContent}”.`;
  }

  function delivered(entry, data) {
    entry.deliveries.append(
      h("li", { class: "chip", "data-testid": "notification-delivery", dataset: { channel: data.channel } }, `✓ ${data.channel}`),
    );
  }

  function apply(item) {
    const { type, data } = item;
    if (type === "notification:requested") {
      const custom = data.custom_template;
      const provisional = custom
        ? { title: custom.title, body: custom.body, icon: custom.icon, actions: custom.actions }
        : { title: data.notification_type.replace(/_/g, " "), body: "…", icon: null, actions: [] };
      const entry = card(item, provisional);
      byRequest.set(data.metadata?.event_id, entry);
      if (!custom) {
        render(data, ctx.token).then(
          (content) => fill(entry, content),
          (problem) => {
            entry.body.hidden = false;
            entry.body.textContent = `This notification could not be rendered: ${problem.message}`;
            entry.li.dataset.problem = "render";
          },
        );
      }
    } else if (type === "notification:sent") {
      const entry = byRequest.get(data.source_event_id) || byNotification.get(data.notification_id);
      if (entry) {
        delivered(entry, data);
        return;
      }
      const created = card(item, { title: data.title, body: "", icon: null, actions: [] });
      byNotification.set(data.notification_id, created);
      delivered(created, data);
      render(data, ctx.token).then(
        (content) => fill(created, content),
        () => {},
      );
    }
  }

  root.append(
    h(
      "section",
      { class: "screen narrow", "aria-labelledby": "notifications-title" },
      h(
        "header",
        { class: "screen-header" },
        h("h1", { id: "notifications-title" }, "Notifications"),
        h("p", { class: "lead" }, "What the marketplace tells you, as it happens."),
      ),
      chosen,
      empty,
      list,
    ),
  );
  return { apply };
}
