// Models: registry versions, what each worker serves, announcements, swaps and refusals, the experiment.
import { api, code, dateTime, el, mono, number, poll, show, table } from "./console.js";

function metrics(values) {
  return Object.entries(values || {}).map(([k, v]) => `${k} ${typeof v === "number" ? number(v, 4) : v}`).join(" · ");
}

function render(m) {
  show("registry-path", m.registry);
  show(
    "versions",
    table(
      ["version", "kind", "created", "size MB", "metrics", "serve it again"],
      m.versions.slice().reverse().map((v) => [
        el("span", { class: v.latest ? "latest mono" : "mono" }, v.version, v.latest ? " (latest)" : ""),
        v.kind, v.created_at, number(v.bytes / 1e6, 1), v.error || metrics(v.metrics),
        code(m.commands.rollback.replace("{version}", v.version)),
      ]),
      "no versions in the registry",
    ),
  );
  show(
    "serving",
    table(
      ["worker", "status", "serves", "refusals", "refused versions"],
      m.serving.map((s) => [
        mono(s.worker), s.status, mono(s.model_version), number(s.refusals),
        Object.entries(s.refused_versions).map(([v, why]) => el("div", {}, mono(v), `: ${why}`)),
      ]),
      "no worker polled yet",
    ),
  );
  show(
    "experiment",
    m.experiment
      ? table(["field", "value"], Object.entries(m.experiment).map(([k, v]) => [k, mono(JSON.stringify(v))]))
      : el("p", { class: "empty" }, `no experiment (topic ${m.experiments_topic} absent or empty)`),
  );
  const history = [
    ...m.announcements.map((a) => ({ at: a.announced_at, what: "announced", version: a.version,
      detail: a.error || `created ${a.created_at} · sha256 ${String(a.sha256).slice(0, 12)}…`, where: "model-updates" })),
    ...m.events.map((e) => ({ at: e.at, what: e.event, version: e.version,
      detail: e.event === "swapped" ? `from ${e.from}` : e.reason, where: e.worker })),
  ].sort((a, b) => b.at - a.at);
  show(
    "history",
    table(["time", "what", "version", "where", "detail"],
      history.map((h) => [dateTime(h.at), el("span", { class: h.what === "refused" ? "bad" : "" }, h.what),
        mono(h.version), mono(h.where), h.detail]),
      "nothing announced or seen since the console started"),
  );
  show("commands", el("p", {}, code(m.commands.list), " re-hashes every version's files."));
}

poll(() => api("/api/models"), render, 2000);
