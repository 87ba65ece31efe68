// Live: the workers' figures as numbers and 15-minute charts, who owns which partition, health.
import { api, chart, el, mono, number, poll, show, table } from "./console.js";

const FIGURES = [
  ["events_in", "events in / s", 0],
  ["records_out", "records out / s", 0],
  ["dead_letters", "dead letters / s", 1],
  ["batch_size", "micro-batch size", 1],
  ["latency_p50_ms", "latency p50 ms", 1],
  ["latency_p99_ms", "latency p99 ms", 1],
  ["lag", "consumer lag", 0],
  ["hit_rate", "online hit rate", 3],
];

function render(live) {
  const s = live.series;
  show(
    "figures",
    FIGURES.map(([key, label, digits]) =>
      el("div", { class: "tile", "data-figure": key }, el("span", { class: "value" }, number(live.current[key], digits)),
        el("span", { class: "label" }, label)),
    ),
  );
  const span = live.history_s;
  show(
    "charts",
    chart("Events per second", s.t, [
      { name: "in", values: s.events_in },
      { name: "recommendations out", values: s.records_out },
      { name: "dead-lettered", values: s.dead_letters },
    ], { span }),
    chart("Event → recommendation latency", s.t, [
      { name: "p50", values: s.latency_p50_ms },
      { name: "p99", values: s.latency_p99_ms },
    ], { span, unit: "ms", digits: 1 }),
    chart("Micro-batch size (mean)", s.t, [{ name: "events per batch", values: s.batch_size }], { span, digits: 1 }),
    chart(`Consumer lag (group ${live.group})`, s.t, [{ name: "events not yet processed", values: s.lag }], { span }),
    chart("Online hit rate", s.t, [{ name: "HR@k, rolling", values: s.hit_rate }], { span, digits: 2 }),
  );
  show(
    "workers",
    table(
      ["worker", "status", "model", "partitions", "catalog items", "events waiting", "s since batch", "broker up"],
      live.workers.map((w) => [
        mono(w.url), el("span", { class: w.status === "ok" ? "good" : "bad" }, w.status), mono(w.model_version),
        w.partitions.join(", "), number(w.catalog_items), number(w.events_waiting), number(w.seconds_since_last_batch, 1),
        w.broker_up === null ? "–" : w.broker_up ? "yes" : "no",
      ]),
      "no worker polled yet",
    ),
  );
  show(
    "partitions",
    table(
      ["partition", "owner", "end offset", "committed", "lag"],
      live.partitions.map((p) => [p.partition, mono(p.owner), number(p.end), number(p.committed), number(p.lag)]),
      "no events topic yet",
    ),
  );
  const b = live.broker;
  show(
    "broker",
    el("p", {}, el("span", { class: b.status === "up" ? "good" : "bad" }, b.status),
      b.brokers !== undefined ? ` · ${b.brokers} broker(s) · controller ${b.controller}` : "",
      b.error ? ` · ${b.error}` : "", b.note ? ` · ${b.note}` : ""),
  );
  show("readers", table(["topic", "state"], Object.entries(live.readers).map(([t, state]) => [mono(t), state])));
}

poll(() => api("/api/live"), render, 1000);
