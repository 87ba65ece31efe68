// Dead letters: the newest records the workers refused, with the reason, the source and a preview.
// A payload is shown as the escaped text the server made of its bytes, and set as text: markup in a
// record stays characters on the page.
import { api, dateTime, el, mono, number, poll, show, table } from "./console.js";

function render(d) {
  show("dlq-topic", d.topic);
  show("dlq-summary", `${d.records.length} shown (the newest ${d.kept} are kept) · reader: ${d.reader ?? "starting"}`);
  show(
    "dead-letters",
    table(
      ["dead-lettered", "reason", "source", "key", "value (escaped)"],
      d.records.map((r) => [
        dateTime(r.dead_lettered_at),
        el("span", { class: "reason" }, r.reason),
        mono(`${r.source.topic}[${r.source.partition}]@${r.source.offset}`),
        mono(r.key),
        el("div", {}, el("pre", { class: "payload" }, r.value), el("span", { class: "note" }, `${number(r.value_bytes)} bytes`)),
      ]),
      "no dead letters",
    ),
  );
}

poll(() => api("/api/dead-letters"), render, 2000);
