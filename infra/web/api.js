// The gateway's HTTP calls, and the token kept in sessionStorage (this tab only, gone when it closes).

// This module is /ui/api.js: the gateway's root is one level up, whatever prefix a proxy adds (and whichever page
// imports it: the screens at /ui/, the operator console at /ui/console/).
const ROOT = new URL("../", import.meta.url);
const TOKEN_KEY = "eventbus.ui.token";

/** An absolute URL of a gateway path ("v1/events"). */
export function apiUrl(path) {
  return new URL(path, ROOT);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

function describe(status, body) {
  const detail = body && body.detail;
  if (detail && typeof detail === "object" && !Array.isArray(detail) && detail.message) return detail.message;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((item) => `${(item.loc || []).slice(1).join(".") || "request"}: ${item.msg}`).join("; ");
  }
  if (typeof detail === "string") return detail;
  return `HTTP ${status}`;
}

async function call(method, path, { token, body } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(apiUrl(path), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, `the gateway did not answer (${error.message})`);
  }
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) throw new ApiError(response.status, describe(response.status, parsed));
  return parsed;
}

export const getJSON = (path, token) => call("GET", path, { token });
export const postJSON = (path, body, token) => call("POST", path, { token, body });

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The claims of a JWT, unverified (the gateway verifies; this only reads the expiry); null when malformed. */
export function claims(token) {
  try {
    const part = String(token).split(".")[1];
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const value = JSON.parse(new TextDecoder().decode(bytes));
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

/** Seconds left before the token expires (negative: expired); Infinity when it carries no exp. */
export function secondsLeft(token) {
  const exp = claims(token)?.exp;
  return typeof exp === "number" ? exp - Date.now() / 1000 : Infinity;
}
