// #/login: the development stand-in (POST /dev/token) when the gateway enables it, otherwise a token field only.
//
// Prefilled links: #/login?sub=u-1&role=user (role repeatable, or roles=user,coach), &user_id=, &coach_id=,
// &next=bookings, and &go=1 to sign in at once (development tokens only).

import { ApiError, postJSON } from "../api.js";
import { h } from "../dom.js";

const DEV_TOKEN_TTL_S = 3600;

function field(id, label, input, hint) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    input,
    hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null,
  );
}

function wantedRoles(params) {
  const listed = [...params.getAll("role"), ...(params.get("roles") || "").split(",")];
  return listed.map((role) => role.trim()).filter(Boolean);
}

export function mountLogin(root, ctx) {
  const { config, params } = ctx;
  const error = h("p", { class: "form-error", role: "alert", "data-testid": "login-error", hidden: true });
  const next = params.get("next") || "";

  function fail(problem) {
    error.textContent = problem instanceof ApiError || problem instanceof Error ? problem.message : String(problem);
    error.hidden = false;
  }

  async function useToken(token, button) {
    error.hidden = true;
    button.disabled = true;
    try {
      await ctx.signIn(token, next);
    } catch (problem) {
      fail(problem);
    } finally {
      button.disabled = false;
    }
  }

  // -- paste a token (always offered) --------------------------------------------------------------------
  const tokenInput = h("textarea", {
    id: "login-token",
    name: "token",
    rows: 4,
    required: true,
    spellcheck: "false",
    autocomplete: "off",
    placeholder: "eyJhbGciOi…",
    "aria-describedby": "login-token-hint",
    "data-testid": "token-input",
  });
  const tokenButton = h("button", { type: "submit", class: "button primary", "data-testid": "token-submit" }, "Sign in");
  const tokenForm = h(
    "form",
    { class: "form", "data-testid": "token-form", "aria-label": "Sign in with a token" },
    field(
      "login-token",
      "Access token",
      tokenInput,
      "A JWT from your identity provider, checked by the gateway; kept in this tab only (sessionStorage).",
    ),
    h("div", { class: "actions" }, tokenButton),
  );
  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    useToken(tokenInput.value.trim(), tokenButton);
  });

  const signedIn = ctx.me
    ? h(
        "p",
        { class: "notice notice-info", "data-testid": "login-current" },
        `Signed in as ${ctx.me.sub}. `,
        h("a", { href: "#/" }, "Continue"),
        " or sign in as someone else below.",
      )
    : null;

  if (!config.dev_tokens) {
    root.append(
      h(
        "section",
        { class: "panel login", "aria-labelledby": "login-title" },
        h("h1", { id: "login-title" }, "Sign in"),
        h("p", { class: "lead" }, "Follow your bookings, coaches and notifications live."),
        signedIn,
        params.get("go") === "1"
          ? h("p", { class: "notice notice-error" }, "This gateway issues no development tokens: paste a token.")
          : null,
        error,
        tokenForm,
      ),
    );
    return { unmount() {} };
  }

  // -- the development stand-in ----------------------------------------------------------------------------
  const roles = wantedRoles(params);
  const sub = h("input", {
    id: "login-sub",
    name: "sub",
    required: true,
    autocomplete: "username",
    value: params.get("sub") || "",
    placeholder: "u-1",
    "data-testid": "login-sub",
  });
  const userId = h("input", {
    id: "login-user-id",
    name: "user_id",
    value: params.get("user_id") || "",
    placeholder: "the subject",
    "aria-describedby": "login-user-id-hint",
    "data-testid": "login-user-id",
  });
  const coachId = h("input", {
    id: "login-coach-id",
    name: "coach_id",
    value: params.get("coach_id") || "",
    placeholder: "the subject",
    "aria-describedby": "login-coach-id-hint",
    "data-testid": "login-coach-id",
  });
  const roleBoxes = config.roles.map((role) =>
    h(
      "label",
      { class: "check" },
      h("input", {
        type: "checkbox",
        name: "roles",
        value: role,
        checked: roles.length ? roles.includes(role) : role === "user",
        "data-testid": `login-role-${role}`,
      }),
      ` ${role}`,
    ),
  );
  const submit = h(
    "button",
    { type: "submit", class: "button primary", "data-testid": "login-submit" },
    "Sign in with a development token",
  );
  const devForm = h(
    "form",
    { class: "form", "data-testid": "dev-login", "aria-label": "Development sign-in" },
    field("login-sub", "Subject", sub),
    h(
      "fieldset",
      { class: "field roles" },
      h("legend", {}, "Roles"),
      h("div", { class: "checks" }, ...roleBoxes),
    ),
    h(
      "div",
      { class: "row" },
      field("login-user-id", "User id", userId, "Whose bookings and notifications (default: the subject)."),
      field("login-coach-id", "Coach id", coachId, "Which coach, for the coach role (default: the subject)."),
    ),
    h("div", { class: "actions" }, submit),
  );

  async function devSignIn() {
    error.hidden = true;
    const chosen = roleBoxes.map((label) => label.querySelector("input")).filter((box) => box.checked);
    if (!sub.value.trim()) {
      fail("The subject is required.");
      return;
    }
    if (!chosen.length) {
      fail("Choose at least one role.");
      return;
    }
    const body = { sub: sub.value.trim(), roles: chosen.map((box) => box.value), ttl_s: DEV_TOKEN_TTL_S };
    if (userId.value.trim()) body.user_id = userId.value.trim();
    if (coachId.value.trim()) body.coach_id = coachId.value.trim();
    submit.disabled = true;
    try {
      const issued = await postJSON("dev/token", body);
      await ctx.signIn(issued.access_token, next);
    } catch (problem) {
      fail(problem);
    } finally {
      submit.disabled = false;
    }
  }

  devForm.addEventListener("submit", (event) => {
    event.preventDefault();
    devSignIn();
  });

  root.append(
    h(
      "section",
      { class: "panel login", "aria-labelledby": "login-title" },
      h("h1", { id: "login-title" }, "Sign in"),
      h("p", { class: "lead" }, "Follow your bookings, coaches and notifications live."),
      h(
        "p",
        { class: "notice notice-warning", "data-testid": "dev-warning" },
        h("strong", {}, "Development sign-in. "),
        "This gateway issues tokens to anyone for any role (EVENTBUS_HTTP_DEV_TOKENS): never in production.",
      ),
      signedIn,
      error,
      devForm,
      h("details", { class: "paste" }, h("summary", {}, "Paste a token instead"), tokenForm),
    ),
  );
  if (params.get("go") === "1" && sub.value.trim()) devSignIn();
  else sub.focus();
  return { unmount() {} };
}
