// Building DOM nodes without markup strings: every text goes through text nodes and setAttribute, so event data
// can never become markup (no HTML string is ever parsed in these screens).

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "dataset") {
      for (const [key, item] of Object.entries(value)) {
        if (item !== null && item !== undefined) el.dataset[key] = String(item);
      }
    } else if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("li", {class: "card", dataset: {id: "s-1"}}, "text", otherNode). */
export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element (for the stats chart). */
export function s(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const DATE = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  day: "numeric",
  month: "short",
  hour: "2-digit",
  minute: "2-digit",
});

function asDate(value) {
  const date = value instanceof Date ? value : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "14:05:09" for a Date or an ISO string; "" when it is not a time. */
export function clock(value) {
  const date = asDate(value);
  return date ? TIME.format(date) : "";
}

/** "Mon 2 Jun, 14:00" for a Date or an ISO string; the value itself when it is not a time. */
export function when(value) {
  const date = asDate(value);
  return date ? DATE.format(date) : String(value ?? "");
}

/** <time datetime=...> showing clock() or when(). */
export function timeEl(value, format = clock) {
  const date = asDate(value);
  return h("time", { datetime: date ? date.toISOString() : null }, format(value));
}

/** "AL" for "Ada Lovelace", "C1" for "c-1". */
export function initials(name) {
  const words = String(name || "?").split(/[\s._-]+/).filter(Boolean);
  const letters = words.length > 1 ? words[0][0] + words[1][0] : String(name || "?").slice(0, 2);
  return letters.toUpperCase();
}

/** A number with thousands separators. */
export function count(value) {
  return new Intl.NumberFormat().format(Number(value) || 0);
}
