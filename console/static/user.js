// User: type an id; their window and current top-k from their worker, and the last records emitted.
import { api, code, dateTime, el, mono, number, poll, show, table } from "./console.js";

const KNOWN_ITEM_FIELDS = new Set(["item_id", "score", "because", "title", "because_title"]);
let stop = null;

function titled(title, itemId) {
  return el("span", {}, el("span", { class: "title" }, title ?? "(no title)"), " ", el("span", { class: "note mono" }, itemId));
}

function render(u) {
  document.getElementById("user-view").hidden = false;
  const w = u.window;
  show("window-note", w.error ? `${w.worker ?? "no worker"}: ${w.error}` : `${w.events.length} events · from ${w.worker}`);
  show(
    "window",
    w.error ? [] : table(["time", "event", "item"], w.events.map((e) => [dateTime(e.ts), e.event_type, titled(e.title, e.item_id)]),
      "no events: an unknown user"),
  );
  const k = u.top_k;
  show("top-k-note", k.error ? `${k.worker ?? "no worker"}: ${k.error}` : `from ${k.worker}`);
  // Whatever else the worker says about the list (model version, a variant, ...), as it says it.
  show("top-k-fields", k.error ? [] : el("p", { class: "fields" },
    Object.entries(k.fields).map(([name, value]) => el("span", { class: "field" }, `${name}: `, mono(JSON.stringify(value))))));
  const extra = [...new Set((k.items || []).flatMap((i) => Object.keys(i)).filter((f) => !KNOWN_ITEM_FIELDS.has(f)))];
  show(
    "top-k",
    k.error ? [] : table(
      ["#", "recommended", "score", "because", ...extra],
      k.items.map((i, n) => [n + 1, titled(i.title, i.item_id), number(i.score, 3),
        i.because ? titled(i.because_title, i.because) : "(trending)", ...extra.map((f) => mono(JSON.stringify(i[f])))]),
      "no list",
    ),
  );
  show(
    "emitted",
    table(
      ["generated", "after event", "model", "items"],
      u.emitted.map((r) => [dateTime(r.generated_at / 1000), mono(r.trigger_event_id), mono(r.model_version),
        r.items.slice(0, 5).map((i) => i.title ?? i.item_id).join(" · ") + (r.items.length > 5 ? " …" : "")]),
      "none in the console's buffer",
    ),
  );
  show("commands", el("p", {}, code(u.commands.follow)), el("p", {}, code(u.commands.forget)));
}

function lookUp(user) {
  if (stop) stop();
  const url = new URL(location.href);
  url.searchParams.set("user", user);
  history.replaceState(null, "", url);
  stop = poll(() => api(`/api/user/${encodeURIComponent(user)}`), render, 2000);
}

document.getElementById("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  lookUp(document.getElementById("user-id").value.trim());
});
const given = new URLSearchParams(location.search).get("user");
if (given) {
  document.getElementById("user-id").value = given;
  lookUp(given);
} else {
  document.getElementById("status").textContent = "type a user id";
}
