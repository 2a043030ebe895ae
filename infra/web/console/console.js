// The operator console's shell: the session (the screens' token, kept in this tab), the header, the hash router.
// Pages: #/overview, #/dead-letters, #/flow, #/group, #/explorer, #/schemas, #/offsets (operator changes things).

import { forgetToken, getJSON, secondsLeft, storeToken, storedToken } from "../api.js";
import { h } from "../dom.js";
import { mountLogin } from "../views/login.js";
import { mountDeadLetters } from "./pages/deadletters.js";
import { mountExplorer } from "./pages/explorer.js";
import { mountFlow } from "./pages/flow.js";
import { mountGroup } from "./pages/group.js";
import { mountOffsets } from "./pages/offsets.js";
import { mountOverview } from "./pages/overview.js";
import { mountSchemas } from "./pages/schemas.js";

const PAGES = {
  overview: { label: "Overview", mount: mountOverview },
  "dead-letters": { label: "Dead letters", mount: mountDeadLetters },
  flow: { label: "Flow", mount: mountFlow },
  group: { label: "Group", mount: mountGroup },
  explorer: { label: "Explorer", mount: mountExplorer },
  schemas: { label: "Schemas", mount: mountSchemas },
  offsets: { label: "Offsets", mount: mountOffsets },
};

const app = { config: null, token: null, me: null, view: null, route: null };
const els = {
  nav: document.getElementById("nav"),
  who: document.getElementById("who"),
  main: document.getElementById("main"),
  refreshed: document.getElementById("refreshed"),
};

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  return { path: path.replace(/\/+$/, ""), params: new URLSearchParams(query) };
}

/** Go to `path` ("flow?id=..."). */
export function navigate(path, { replace = false } = {}) {
  const target = `#/${path}`;
  if (replace) {
    history.replaceState(null, "", target);
    route();
  } else if (location.hash === target) route();
  else location.hash = target;
}

async function signIn(token, next) {
  const me = await getJSON("v1/console/whoami", token); // 401/403: the login page shows why
  storeToken(token);
  app.token = token;
  app.me = me;
  renderHeader();
  navigate(next && PAGES[next.split("?")[0]] ? next : "overview", { replace: true });
}

function signOut() {
  forgetToken();
  app.token = null;
  app.me = null;
  renderHeader();
  navigate("login");
}

function renderHeader() {
  const { me } = app;
  els.nav.replaceChildren(
    ...(me
      ? Object.entries(PAGES).map(([name, page]) =>
          h(
            "a",
            {
              href: `#/${name}`,
              class: name === app.route ? "nav-link active" : "nav-link",
              "aria-current": name === app.route ? "page" : null,
              "data-testid": `nav-${name}`,
            },
            page.label,
          ),
        )
      : []),
  );
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
    h("button", { type: "button", class: "button ghost", "data-testid": "logout", onclick: signOut }, "Sign out"),
  );
}

function route() {
  const { path, params } = parseHash();
  if (app.view && app.view.unmount) app.view.unmount();
  app.view = null;
  let name = path || "overview";
  if (name !== "login" && !app.me) {
    history.replaceState(null, "", `#/login?next=${encodeURIComponent(name + (params.toString() ? `?${params}` : ""))}`);
    name = "login";
  } else if (name !== "login" && !PAGES[name]) {
    name = "overview";
    history.replaceState(null, "", "#/overview");
  }
  app.route = name;
  renderHeader();
  document.body.dataset.route = name;
  els.main.replaceChildren();
  if (name === "login") {
    document.title = "Sign in · eventbus console";
    const loginParams = parseHash().params;
    if (!loginParams.get("role") && !loginParams.get("roles")) loginParams.set("role", "operator");
    const config = { ...app.config, roles: ["operator", "admin"] };
    els.main.append(
      h(
        "section",
        { class: "panel" },
        h("h1", {}, "Operator console"),
        h("p", { class: "muted" }, "Sign in as admin (reads everything) or operator (also replays dead letters and resets offsets)."),
      ),
    );
    const box = h("div", {});
    els.main.append(box);
    app.view = mountLogin(box, { config, params: loginParams, me: app.me, signIn, signOut, navigate });
    return;
  }
  document.title = `${PAGES[name].label} · eventbus console`;
  const ctx = {
    token: app.token,
    me: app.me,
    params,
    navigate,
    refreshed: (when = new Date()) => {
      els.refreshed.textContent = `Updated ${when.toLocaleTimeString()}`;
    },
  };
  app.view = PAGES[name].mount(els.main, ctx);
}

async function boot() {
  try {
    app.config = await getJSON("v1/ui/config");
  } catch (error) {
    els.main.replaceChildren(h("section", { class: "panel" }, h("h1", {}, "The gateway did not answer"), h("p", {}, error.message)));
    return;
  }
  window.addEventListener("hashchange", route);
  const token = storedToken();
  const { path, params } = parseHash();
  const loginLink = path === "login" && params.get("go") === "1";
  if (token && secondsLeft(token) > 0 && !loginLink) {
    try {
      app.me = await getJSON("v1/console/whoami", token);
      app.token = token;
    } catch {
      app.me = null; // not a console token (a user's, say): sign in again
    }
  }
  route();
  document.body.dataset.booted = "true";
}

boot();
