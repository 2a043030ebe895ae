// The screens' shell: the session (token, who it is), the header, the hash router and the live stream.

import { ApiError, forgetToken, getJSON, secondsLeft, storeToken, storedToken } from "./api.js";
import { h } from "./dom.js";
import { LiveStream } from "./live.js";
import { mountBookings } from "./views/bookings.js";
import { mountCoaches } from "./views/coaches.js";
import { mountLogin } from "./views/login.js";
import { mountNotifications } from "./views/notifications.js";
import { mountStats } from "./views/stats.js";

// The types the screens show; the stream asks for those the token may read.
const SCREEN_TYPES = [
  "session:created",
  "session:creation_failed",
  "session:updated",
  "session:cancelled",
  "session:completed",
  "coach:status_changed",
  "coach:rating_updated",
  "coach:profile_updated",
  "notification:requested",
  "notification:sent",
];

const SCREENS = {
  bookings: { label: "Bookings", mount: mountBookings, allowed: (me) => me.readable.includes("session:created") },
  coaches: { label: "Coaches", mount: mountCoaches, allowed: (me) => me.readable.includes("coach:status_changed") },
  notifications: {
    label: "Notifications",
    mount: mountNotifications,
    allowed: (me) => me.readable.includes("notification:requested"),
  },
  stats: { label: "Stats", mount: mountStats, allowed: (me) => me.is_admin },
};

const STATE_LABELS = {
  idle: "Not streaming",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  expired: "Signed out",
};

const app = {
  config: null,
  token: null,
  me: null,
  live: new LiveStream(),
  view: null,
  route: null,
  unseenNotifications: 0,
};

const els = {
  nav: document.getElementById("nav"),
  who: document.getElementById("who"),
  main: document.getElementById("main"),
  notices: document.getElementById("notices"),
  streamState: document.getElementById("stream-state"),
  streamCount: document.getElementById("stream-count"),
};

/** {path, params} of the current hash: "#/login?sub=u-1&role=user" -> {path: "login", params}. */
function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  return { path: path.replace(/\/+$/, ""), params: new URLSearchParams(query) };
}

export function navigate(path, { replace = false } = {}) {
  const target = `#/${path}`;
  if (replace) {
    history.replaceState(null, "", target); // e.g. a sign-in link: "back" must not sign in again
    route();
  } else if (location.hash === target) route();
  else location.hash = target;
}

function defaultScreen(me) {
  if (!me) return "login";
  if (me.roles.includes("user") && SCREENS.bookings.allowed(me)) return "bookings";
  if (me.roles.includes("coach") && SCREENS.coaches.allowed(me)) return "coaches";
  if (me.is_admin) return "stats";
  return Object.keys(SCREENS).find((name) => SCREENS[name].allowed(me)) || "login";
}

/** Start a session with `token`: ask the gateway who it is (401: refused), then stream what it reads. */
export async function signIn(token, next) {
  const me = await getJSON("v1/ui/me", token);
  const types = SCREEN_TYPES.filter((type) => me.readable.includes(type));
  if (!types.length && !me.is_admin) {
    throw new ApiError(403, `the roles ${me.roles.join(", ")} read no events: sign in as a user, coach or admin`);
  }
  signOut({ quiet: true });
  storeToken(token);
  app.token = token;
  app.me = me;
  app.live.start(token, types);
  renderHeader();
  navigate(next && SCREENS[next] && SCREENS[next].allowed(me) ? next : defaultScreen(me), { replace: true });
}

export function signOut({ quiet = false } = {}) {
  app.live.stop();
  forgetToken();
  app.token = null;
  app.me = null;
  app.unseenNotifications = 0;
  els.notices.replaceChildren();
  renderHeader();
  if (!quiet) navigate("login");
}

function renderHeader() {
  const { me } = app;
  const current = app.route;
  const links = me
    ? Object.entries(SCREENS)
        .filter(([, screen]) => screen.allowed(me))
        .map(([name, screen]) => {
          const badge =
            name === "notifications" && app.unseenNotifications
              ? h(
                  "span",
                  { class: "badge", "data-testid": "nav-unseen", "aria-label": `${app.unseenNotifications} new` },
                  app.unseenNotifications,
                )
              : null;
          return h(
            "a",
            {
              href: `#/${name}`,
              class: name === current ? "nav-link active" : "nav-link",
              "aria-current": name === current ? "page" : null,
              "data-testid": `nav-${name}`,
            },
            screen.label,
            badge,
          );
        })
    : [];
  els.nav.replaceChildren(...links);
  if (!me) {
    els.who.replaceChildren(h("span", { class: "muted" }, "Not signed in"));
    return;
  }
  els.who.replaceChildren(
    h(
      "span",
      { class: "who", "data-testid": "who" },
      h("span", { class: "avatar", "aria-hidden": "true" }, me.sub.slice(0, 2).toUpperCase()),
      h("span", { class: "who-name", "data-testid": "who-sub" }, me.sub),
      ...me.roles.map((role) => h("span", { class: `role role-${role}`, "data-testid": "who-role" }, role)),
    ),
    h("button", { type: "button", class: "button ghost", "data-testid": "logout", onclick: () => signOut() }, "Sign out"),
  );
}

function showStreamState(state) {
  els.streamState.dataset.state = state;
  els.streamState.dataset.opens = String(app.live.opened); // connections opened (EventSource reconnects count)
  els.streamState.dataset.sources = String(app.live.created); // EventSources made (1 unless one gave up)
  els.streamState.textContent = STATE_LABELS[state] || state;
}

function showCount() {
  const n = app.live.events.length;
  els.streamCount.textContent = `${n} event${n === 1 ? "" : "s"} received`;
  els.streamCount.dataset.count = String(n);
}

const NOTICE_TITLES = {
  reset: "Stream restarted from now",
  error: "The gateway closed the stream",
  expired: "Session ended",
};

function showNotice({ kind, message, at }) {
  const dismiss = h("button", { type: "button", class: "close", "aria-label": "Dismiss" }, "×");
  const notice = h(
    "div",
    { class: `notice notice-${kind}`, role: "alert", "data-testid": "stream-notice", dataset: { kind } },
    h("strong", {}, NOTICE_TITLES[kind] || kind),
    h("span", {}, ` ${message} `),
    h("span", { class: "muted" }, `(${at.toLocaleTimeString()})`),
    kind === "reset" ? h("span", {}, " Events from now on are shown live.") : null,
    kind === "error" ? h("span", {}, " Reconnecting from your last event…") : null,
    dismiss,
  );
  dismiss.addEventListener("click", () => notice.remove());
  if (kind === "expired") signOut(); // first: signing out clears the notices
  els.notices.append(notice);
}

function route() {
  const { path, params } = parseHash();
  if (app.view) app.view.unmount();
  app.view = null;
  let name = path || defaultScreen(app.me);
  let address = `#/${name}`;
  if (name !== "login" && !app.me) {
    address = SCREENS[name] ? `#/login?next=${name}` : "#/login"; // back to this screen once signed in
    name = "login";
  }
  if (name !== "login" && !SCREENS[name]) {
    name = defaultScreen(app.me);
    address = `#/${name}`;
  }
  if (name !== path) history.replaceState(null, "", address); // the address says which screen shows
  app.route = name;
  if (name === "notifications") app.unseenNotifications = 0;
  renderHeader();
  document.body.dataset.route = name;
  els.main.replaceChildren();
  const context = { ...app, navigate, signIn, signOut, params: name === path ? params : parseHash().params };
  if (name === "login") {
    document.title = "Sign in · Coaching marketplace";
    app.view = mountLogin(els.main, context);
  } else if (!SCREENS[name].allowed(app.me)) {
    document.title = "Not available · Coaching marketplace";
    els.main.append(
      h(
        "section",
        { class: "panel empty", "data-testid": "forbidden" },
        h("h1", {}, SCREENS[name].label),
        h("p", {}, `This screen is not available with the roles ${app.me.roles.join(", ")}.`),
      ),
    );
  } else {
    document.title = `${SCREENS[name].label} · Coaching marketplace`;
    app.view = mountLive(name, context);
  }
}

/** Mount a screen fed by the stream: it gets every event so far, then each new one. */
function mountLive(name, context) {
  const view = SCREENS[name].mount(els.main, context);
  for (const item of app.live.events) view.apply?.(item);
  view.ready?.();
  const stop = app.live.onEvent((item) => view.apply?.(item));
  return {
    unmount() {
      stop();
      view.unmount?.();
    },
  };
}

async function boot() {
  app.live.onState(showStreamState);
  app.live.onNotice(showNotice);
  app.live.onEvent((item) => {
    showCount();
    if (item.type.startsWith("notification:") && app.route !== "notifications") {
      app.unseenNotifications += 1;
      renderHeader();
    }
  });
  showStreamState("idle");
  showCount();
  try {
    app.config = await getJSON("v1/ui/config");
  } catch (error) {
    els.main.replaceChildren(
      h("section", { class: "panel empty" }, h("h1", {}, "The gateway did not answer"), h("p", {}, error.message)),
    );
    return;
  }
  window.addEventListener("hashchange", route);
  const token = storedToken();
  let routed = false;
  const { path, params } = parseHash();
  const loginLink = path === "login" && params.get("go") === "1"; // a link signing someone in: it wins
  if (token && secondsLeft(token) > 0 && !loginLink) {
    try {
      await signIn(token, path); // a reload keeps the tab's session and screen
      routed = true;
    } catch {
      forgetToken();
    }
  }
  if (!routed) route();
  document.body.dataset.booted = "true";
}

boot();
