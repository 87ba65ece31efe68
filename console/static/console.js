// Shared by the pages: API calls (with the token), elements built from text only, polling, charts.
// Safety: nothing here, or in any page, parses data as HTML. Values enter the page as text nodes
// (append / textContent), attributes are set only to constants.

const TOKEN_KEY = "streamrec-console-token";
const SVG = "http://www.w3.org/2000/svg";

function token() {
  const given = new URLSearchParams(location.search).get("token");
  if (given) sessionStorage.setItem(TOKEN_KEY, given);
  return sessionStorage.getItem(TOKEN_KEY);
}

export async function api(path) {
  const headers = {};
  const secret = token();
  if (secret) headers["X-Streamrec-Token"] = secret;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// An element with constant attributes and children that are nodes or text (never markup).
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  for (const child of children.flat()) node.append(child instanceof Node ? child : text(child));
  return node;
}

function text(value) {
  return value === null || value === undefined ? "–" : String(value);
}

export function table(headings, rows, empty = "nothing yet") {
  if (!rows.length) return el("p", { class: "empty" }, empty);
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, headings.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))),
  );
}

export const code = (command) => el("code", { class: "command" }, command);
export const mono = (value) => el("span", { class: "mono" }, text(value));

export function number(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function clock(epochSeconds) {
  if (epochSeconds === null || epochSeconds === undefined) return "–";
  return new Date(epochSeconds * 1000).toLocaleTimeString("en-GB");
}

export function dateTime(epochSeconds) {
  if (epochSeconds === null || epochSeconds === undefined) return "–";
  return new Date(epochSeconds * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function show(id, ...children) {
  document.getElementById(id).replaceChildren(...children.flat());
}

// Calls load() every `ms` and hands the answer to render(); the header says when it last worked.
export function poll(load, render, ms = 1500) {
  const status = document.getElementById("status");
  let timer = null;
  let stopped = false;
  async function tick() {
    try {
      const answer = await load();
      if (stopped) return;
      render(answer);
      status.textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
      status.className = "ok";
    } catch (error) {
      status.textContent = `no answer: ${error.message}`;
      status.className = "error";
    }
    if (!stopped) timer = setTimeout(tick, ms);
  }
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// A line chart of the last `span` seconds: one polyline per series, gaps where a value is null.
export function chart(title, times, series, { span = 900, unit = "", digits = 0 } = {}) {
  const width = 560, height = 150, left = 48, right = 8, top = 8, bottom = 20;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "chart");
  // The last `span` seconds, or since the first point (at least a minute): a young console's lines fill the chart.
  const end = times.length ? times[times.length - 1] : Date.now() / 1000;
  const start = Math.max(end - span, Math.min(times.length ? times[0] : end, end - 60));
  const values = series.flatMap((s) => s.values.filter((v, i) => v !== null && times[i] >= start));
  const top_value = niceCeiling(Math.max(0, ...values));
  const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
  const y = (v) => top + (1 - v / top_value) * (height - top - bottom);
  for (const fraction of [0, 0.5, 1]) {
    const value = top_value * fraction;
    svg.append(svgNode("line", { x1: left, x2: width - right, y1: y(value), y2: y(value), class: "grid" }));
    const label = number(value, top_value >= 10 ? 0 : digits);
    svg.append(svgNode("text", { x: left - 4, y: y(value) + 4, class: "axis", "text-anchor": "end" }, label));
  }
  svg.append(svgNode("text", { x: left, y: height - 4, class: "axis" }, clock(start)));
  svg.append(svgNode("text", { x: width - right, y: height - 4, class: "axis", "text-anchor": "end" }, clock(end)));
  series.forEach((s, index) => {
    let points = [];
    const flush = () => {
      if (points.length) svg.append(svgNode("polyline", { points: points.join(" "), class: `line line-${index}` }));
      points = [];
    };
    times.forEach((t, i) => {
      if (t < start || s.values[i] === null) return flush();
      points.push(`${x(t).toFixed(1)},${y(s.values[i]).toFixed(1)}`);
    });
    flush();
  });
  const legend = el(
    "div",
    { class: "legend" },
    series.map((s, index) => el("span", { class: `key key-${index}` }, s.name)),
    unit ? el("span", { class: "unit" }, unit) : [],
  );
  return el("figure", { class: "panel" }, el("figcaption", {}, title), svg, legend);
}

function svgNode(tag, attributes, content) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (content !== undefined) node.textContent = content;
  return node;
}

function niceCeiling(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((c) => c >= value);
}
