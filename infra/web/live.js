// One live stream per signed-in tab: GET /v1/events as an EventSource, and every event it delivered, in order.
//
// Resuming is the browser's job: when the connection drops, EventSource reconnects by itself and sends the id of
// the last event it got as Last-Event-ID, and the gateway delivers everything missed since, none twice. Only when
// EventSource gives up (readyState CLOSED: an HTTP error, say a gateway still starting) is a new one made here, and
// then the last id travels as ?last_event_id=. Nothing is deduplicated: what the gateway sends is what is shown.

import { ApiError, apiUrl, getJSON, secondsLeft } from "./api.js";

const MAX_BACKOFF_MS = 30000;
const FIRST_BACKOFF_MS = 2000;

export class LiveStream {
  constructor() {
    this.events = [];
    this.state = "idle";
    this.lastId = null;
    this.source = null;
    this.timer = null;
    this.failures = 0;
    this.opened = 0;
    this.created = 0;
    this.eventListeners = new Set();
    this.stateListeners = new Set();
    this.noticeListeners = new Set();
  }

  /** Start streaming `types` with `token` (from now). */
  start(token, types) {
    this.stop();
    this.token = token;
    this.types = types;
    this.events = [];
    this.lastId = null;
    this.failures = 0;
    this.opened = 0;
    this.created = 0;
    if (types.length) this.open(null);
    else this.setState("idle");
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.source) this.source.close();
    this.source = null;
    this.setState("idle");
  }

  /** fn(item) for every event from now on; returns the unsubscribe function. */
  onEvent(fn) {
    this.eventListeners.add(fn);
    return () => this.eventListeners.delete(fn);
  }

  onState(fn) {
    this.stateListeners.add(fn);
    return () => this.stateListeners.delete(fn);
  }

  /** fn({kind, message}) for reset, error (from the gateway), expired. */
  onNotice(fn) {
    this.noticeListeners.add(fn);
    return () => this.noticeListeners.delete(fn);
  }

  setState(state) {
    this.state = state;
    for (const fn of this.stateListeners) fn(state);
  }

  notice(kind, message) {
    for (const fn of this.noticeListeners) fn({ kind, message, at: new Date() });
  }

  open(lastId) {
    const url = apiUrl("v1/events");
    url.searchParams.set("types", this.types.join(","));
    url.searchParams.set("access_token", this.token);
    if (lastId) url.searchParams.set("last_event_id", lastId);
    const source = new EventSource(url);
    this.created += 1;
    this.source = source;
    this.setState(this.opened ? "reconnecting" : "connecting");
    source.addEventListener("open", () => {
      if (source !== this.source) return;
      this.failures = 0;
      this.opened += 1;
      this.setState("live");
    });
    for (const type of this.types) {
      source.addEventListener(type, (message) => this.receive(source, type, message));
    }
    source.addEventListener("reset", (message) => {
      if (source !== this.source) return;
      this.lastId = message.lastEventId || null; // the gateway cleared the id: the old cursor is gone
      this.notice("reset", reason(message.data, "The events since your last one are no longer held."));
    });
    source.addEventListener("error", (event) => {
      if (source !== this.source) return;
      if (event instanceof MessageEvent) {
        // "event: error" from the gateway (a stream too slow): it closes the stream; EventSource resumes it.
        this.notice("error", reason(event.data, "The gateway closed the stream."));
        return;
      }
      if (source.readyState === EventSource.CLOSED) this.reopen();
      else this.setState("reconnecting"); // EventSource retries by itself, with Last-Event-ID
    });
  }

  receive(source, type, message) {
    if (source !== this.source) return;
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      data = { unreadable: message.data };
    }
    this.lastId = message.lastEventId || this.lastId;
    const item = { seq: this.events.length + 1, type, id: message.lastEventId, data, at: new Date() };
    this.events.push(item);
    for (const fn of this.eventListeners) fn(item);
  }

  async reopen() {
    if (this.source) this.source.close();
    this.source = null;
    this.setState("reconnecting");
    if (secondsLeft(this.token) <= 0) {
      this.expire("Your session expired: sign in again.");
      return;
    }
    const delay = Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** this.failures);
    this.failures += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(async () => {
      this.timer = null;
      try {
        await getJSON("v1/ui/me", this.token); // a refused token would make EventSource fail forever
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) {
          this.expire(`The gateway no longer accepts your token (${error.message}): sign in again.`);
          return;
        }
      }
      if (this.state === "reconnecting" && !this.source) this.open(this.lastId);
    }, delay);
  }

  expire(message) {
    this.stop();
    this.setState("expired");
    this.notice("expired", message);
  }
}

function reason(data, fallback) {
  try {
    const parsed = JSON.parse(data);
    return parsed.message || parsed.reason || fallback;
  } catch {
    return fallback;
  }
}
