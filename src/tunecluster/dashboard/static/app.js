// tunecluster dashboard: draws each view from the JSON API (see app.py) with plotly.js.
// No framework and no build step: plain DOM, served as is from the Python package.
"use strict";

// The page's settings: a JSON data block, not a script (the CSP allows no inline script).
const TC = JSON.parse(document.getElementById("tc-config").textContent);
const main = document.getElementById("main");
const ACTION = {"X-Tunecluster": "1"};
const FINAL = ["completed", "failed", "cancelled"];
const PLOT_CONFIG = {displaylogo: false, responsive: true};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number" && !Number.isInteger(v)) return Number(v.toPrecision(4)).toString();
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

// Who trained a trial: a gang's workers in rank order, else its one worker.
function who(t) {
  const members = (t.workers || []).map((m) => m.worker);
  return members.length > 1 ? members.join(" + ") : t.worker;
}

function dur(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(r).padStart(2, "0")}s`;
}

function when(ms) { return ms ? new Date(ms).toLocaleString() : "–"; }

function plot(div, fig) {
  if (!fig || !div) return;
  Plotly.react(div, fig.data, fig.layout, PLOT_CONFIG);
}

// Charts are drawn when they are on screen: drawing (parallel coordinates above all) costs
// the browser far more than fetching, and a page left open below the fold or in a
// background tab should cost the machine next to nothing.
const offscreen = new Map();  // div -> the figure it waits to draw
const watcher = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    entry.target.dataset.visible = entry.isIntersecting ? "1" : "";
    if (entry.isIntersecting && offscreen.has(entry.target)) {
      const fig = offscreen.get(entry.target);
      offscreen.delete(entry.target);
      plot(entry.target, fig);
    }
  }
}, {rootMargin: "200px"});

function plotWhenVisible(div, fig) {
  if (!div.dataset.watched) { watcher.observe(div); div.dataset.watched = "1"; }
  if (div.dataset.visible && !document.hidden) { offscreen.delete(div); plot(div, fig); }
  else offscreen.set(div, fig);
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) return;
  for (const [div, fig] of [...offscreen]) {
    if (div.dataset.visible) { offscreen.delete(div); plot(div, fig); }
  }
});

function badge(state) { return el("span", {class: `state ${state}`, text: state}); }

function progress(done, total) {
  const pct = total ? Math.min(100, Math.round(100 * done / total)) : 0;
  return el("div", {class: "progress", title: `${done}/${total}`},
            bar(pct),
            el("span", {text: `${done}/${total || "?"}`}));
}

// Its width through the CSSOM: a style attribute is inline style to the CSP.
function bar(pct) {
  const node = el("div", {class: "bar"});
  node.style.width = `${pct}%`;
  return node;
}

function setLive(text, cls) {
  const live = document.getElementById("live");
  live.textContent = text;
  live.className = cls || "";
}

function showError(err) {
  main.replaceChildren(el("p", {class: "error", text: String(err.message || err)}));
}

// A sortable, filterable table: columns are [label, value(row), render(row)?].
function table(id, columns, rows, state) {
  state.sort = state.sort || null;
  const wrap = el("div", {class: "table-wrap"});
  const filter = el("input", {type: "search", placeholder: "filter…", value: state.filter || "",
                              class: "filter", id: `${id}-filter`});
  const body = el("tbody");
  const head = el("tr", {}, columns.map(([label], i) => el("th", {
    class: "sortable", onclick: () => {
      state.sort = state.sort && state.sort[0] === i ? [i, -state.sort[1]] : [i, 1];
      draw();
    }}, label)));
  function draw() {
    const needle = (filter.value || "").toLowerCase();
    state.filter = filter.value;
    let shown = rows.filter((r) => !needle || columns.some(([, value]) =>
      String(fmt(value(r))).toLowerCase().includes(needle)));
    if (state.sort) {
      const [i, dir] = state.sort, value = columns[i][1];
      shown = shown.slice().sort((a, b) => {
        const x = value(a), y = value(b);
        if (x === y) return 0;
        if (x === null || x === undefined) return 1;
        if (y === null || y === undefined) return -1;
        return (x < y ? -1 : 1) * dir;
      });
    }
    body.replaceChildren(...shown.map((r) => el("tr", {class: r._class || null},
      columns.map(([, value, render]) => el("td", {}, render ? render(r) : fmt(value(r)))))));
  }
  filter.addEventListener("input", draw);
  draw();
  wrap.append(filter, el("table", {id}, el("thead", {}, head), body));
  return wrap;
}

// --- Jobs --------------------------------------------------------------------------------

async function viewJobs() {
  const states = ["", "queued", "running", "finalizing", "completed", "failed", "cancelled"];
  const select = el("select", {id: "state-filter"},
                    states.map((s) => el("option", {value: s}, s || "all states")));
  const picked = new Set();
  const holder = el("div");
  const compare = el("button", {id: "compare", onclick: () => {
    if (picked.size) location.href = `/compare?jobs=${[...picked].join(",")}`;
  }}, "Compare selected");
  main.replaceChildren(el("h1", {}, "Jobs"), el("div", {class: "toolbar"}, select, compare),
                       holder);
  const tableState = {};
  async function refresh() {
    try {
      const rows = await api(`/api/jobs?state=${encodeURIComponent(select.value)}`);
      holder.replaceChildren(table("jobs", [
        ["", () => null, (r) => el("input", {type: "checkbox", checked: picked.has(r.job),
          onchange: (e) => e.target.checked ? picked.add(r.job) : picked.delete(r.job)})],
        ["job", (r) => r.job, (r) => el("a", {href: `/jobs/${r.job}`}, r.job)],
        ["name", (r) => r.name],
        ["state", (r) => r.state, (r) => r.waiting
          ? el("span", {title: r.waiting}, badge(r.state), " ", el("small", {class: "muted"}, "waiting"))
          : badge(r.state)],
        ["trials", (r) => r.done, (r) => progress(r.done, r.total)],
        ["best", (r) => r.best],
        ["objective", (r) => `${r.objective.name} (${r.objective.direction})`],
        ["elapsed", (r) => r.elapsed_s, (r) => dur(r.elapsed_s)],
        ["time left", (r) => r.eta_s, (r) => r.eta_s === null ? "–" : `~${dur(r.eta_s)}`],
        ["priority", (r) => r.priority],
        ["scheduler", (r) => r.scheduler],
      ], rows, tableState));
    } catch (err) { holder.replaceChildren(el("p", {class: "error", text: err.message})); }
  }
  select.addEventListener("change", refresh);
  await refresh();
  setInterval(refresh, 3000);
  setLive("refreshing every 3 s");
}

// --- Job ---------------------------------------------------------------------------------

function lineage(t) {
  const tuner = t.tuner || {}, parent = tuner["tuner/trial_id"];
  if (parent === undefined) return "";
  const copied = tuner["tuner/exploited"] !== undefined
    ? ` (copied member ${tuner["tuner/exploited"]})` : "";
  return el("span", {}, el("a", {href: `/jobs/${TC.job}/trials/${parent}`}, String(parent)),
            copied);
}

async function viewJob() {
  const job = TC.job;
  let doc = null;
  const tableState = {};
  const parts = {
    head: el("div"), summary: el("div", {class: "cards"}), table: el("div"),
    history: el("div", {class: "chart", id: "chart-history"}),
    curves: el("div", {class: "chart", id: "chart-curves"}),
    parallel: el("div", {class: "chart", id: "chart-parallel"}),
    slices: el("div", {class: "chart", id: "chart-slices"}),
    importance: el("div", {class: "chart", id: "chart-importance"}),
    timeline: el("div", {class: "chart", id: "chart-timeline"}),
    best_time: el("div", {class: "chart", id: "chart-best-time"}),
    pareto: el("div", {class: "chart", id: "chart-pareto"}),
    method: el("p", {class: "muted small"}),
  };
  main.replaceChildren(parts.head, parts.summary,
    el("section", {}, el("h2", {}, "Trials"), parts.table),
    el("div", {class: "grid"}, el("section", {}, parts.curves), el("section", {}, parts.history)),
    el("div", {class: "grid"}, el("section", {}, parts.timeline), el("section", {}, parts.best_time)),
    el("section", {}, parts.pareto),
    el("section", {}, parts.parallel), el("section", {}, parts.slices),
    el("section", {}, parts.importance, parts.method));

  function render() {
    const s = doc.summary, best = doc.best || {};
    const cancel = !TC.readOnly && !FINAL.includes(doc.state) ? el("button", {
      id: "cancel", class: "danger", onclick: async (e) => {
        e.target.disabled = true;
        try {
          await api(`/api/jobs/${job}/cancel`, {method: "POST", headers: ACTION});
          e.target.textContent = "Cancelling…";
        } catch (err) { e.target.textContent = err.message; }
      }}, "Cancel job") : null;
    const waiting = doc.waiting  // its trials need more workers than are alive (gangs)
      ? [el("p", {class: "muted", id: "waiting"}, `waiting: ${doc.waiting}`)] : [];
    parts.head.replaceChildren(el("h1", {}, `${doc.name} `, el("small", {}, doc.job), " ",
                                  el("span", {id: "state"}, badge(doc.state)), " ", cancel),
                               ...waiting);
    const downloads = el("ul", {class: "downloads"}, doc.downloads.map((d) => el("li", {},
      d.available ? el("a", {href: `/api/jobs/${job}/download/${d.name}`, download: true},
                       d.name)
                  : el("span", {class: "muted", title: d.note || ""}, `${d.name} (${d.note})`))));
    const test = doc.test ? Object.entries(doc.test).map(([k, v]) => `${k} = ${fmt(v)}`).join(", ")
                          : "after the job completes";
    parts.summary.replaceChildren(
      el("div", {class: "card"}, el("h3", {}, "Progress"), progress(s.done, s.total),
         el("p", {}, `elapsed ${dur(s.elapsed_s)}`,
            s.eta_s !== null ? ` · about ${dur(s.eta_s)} left` : ""),
         el("p", {class: "muted"}, `${doc.spec.search?.algorithm || ""} search · scheduler `
            + `${s.scheduler} · priority ${s.priority}`),
         doc.error ? el("p", {class: "error"}, doc.error) : null),
      el("div", {class: "card"}, el("h3", {}, "Best trial"),
         el("p", {}, `${doc.objective.name} (${doc.objective.direction}): `,
            el("b", {id: "best-score"}, fmt(best.score)), " · trial ",
            best.trial ? el("a", {href: `/jobs/${job}/trials/${best.trial}`}, best.trial) : "–"),
         el("p", {class: "hps"}, Object.entries(best.hyperparameters || {}).map(([k, v]) =>
            el("span", {class: "hp"}, `${k}=${fmt(v)}`))),
         el("p", {}, `test split: ${test}`)),
      el("div", {class: "card"}, el("h3", {}, "Downloads"), downloads));
    const names = [...new Set(doc.trials.flatMap((t) => Object.keys(t.hyperparameters)))];
    const rows = doc.trials.map((t) => ({...t, _class: t.trial === best.trial ? "best" : null}));
    parts.table.replaceChildren(table("trials", [
      ["trial", (t) => t.trial, (t) => el("a", {href: `/jobs/${job}/trials/${t.trial}`}, t.trial)],
      ["state", (t) => t.state, (t) => badge(t.state)],
      [doc.objective.name, (t) => t.score],
      ["epochs", (t) => t.epochs, (t) => el("span", {class: "epochs"}, t.epochs)],
      ["attempts", (t) => t.attempts],
      ["worker", (t) => who(t)],
      ...names.map((n) => [n, (t) => t.hyperparameters[n]]),
      // the lineage (Hyperband, ASHA, PBT): the trial this one continues, and for a
      // PBT exploit the member whose weights it copied
      ...(doc.trials.some((t) => t.tuner && t.tuner["tuner/trial_id"] !== undefined) ? [[
        "continues", (t) => (t.tuner || {})["tuner/trial_id"] ?? "",
        (t) => lineage(t)]] : []),
      ["reason", (t) => t.reason,
       (t) => el("span", {class: "error small", title: t.error || ""}, t.reason || "")],
    ], rows, tableState));
    for (const key of ["history", "curves", "parallel", "slices", "importance", "timeline",
                       "best_time", "pareto"]) {
      parts[key].hidden = !doc.figures[key];  // the Pareto front: list objectives only
      if (!doc.figures[key]) continue;
      // Redraw only what changed: drawing costs the browser far more than the fetch
      // (most events change the table and the curves, not the other charts).
      const text = JSON.stringify(doc.figures[key]);
      if (drawn[key] !== text) { plotWhenVisible(parts[key], doc.figures[key]); drawn[key] = text; }
    }
    parts.method.textContent = `Importance: ${doc.importance.method}.`
      + (doc.importance.reason ? ` ${doc.importance.reason}.` : "");
  }

  const drawn = {};
  let pending = null;
  async function refetch() {
    pending = null;
    try { doc = await api(`/api/jobs/${job}`); render(); } catch (err) { showError(err); }
  }
  // Events come in bursts (a trial ends, the next is created and starts): one refetch.
  function soon(ms = 1000) { if (!pending) pending = setTimeout(refetch, ms); }

  // Epochs arrive one by one from every worker: their points are drawn together, at most
  // every 300 ms (well within the second the page promises).
  let points = [];
  function flushPoints() {
    const div = parts.curves, batch = points;
    points = [];
    if (!div.data || offscreen.has(div)) { soon(); return; }
    const xs = [], ys = [], indices = [];
    for (const [trial, epoch, value] of batch) {
      // by the raw id in meta (the name is escaped for display); the order may change
      const index = div.data.findIndex((t) => (t.meta && t.meta.trial) === trial);
      if (index < 0) { soon(); continue; }
      const at = indices.indexOf(index);
      if (at < 0) { indices.push(index); xs.push([epoch]); ys.push([value]); }
      else { xs[at].push(epoch); ys[at].push(value); }
    }
    if (indices.length) Plotly.extendTraces(div, {x: xs, y: ys}, indices);
    drawn.curves = null;  // the drawn curves are ahead of the last document now
  }

  function onEpoch(data) {
    const div = parts.curves, metric = doc.objective.name;
    const value = data.metrics ? data.metrics[metric] : undefined;
    const index = (div.data || []).findIndex((t) => t.name === data.trial);
    if (index < 0 || typeof value !== "number") { soon(); return; }
    if (!points.length) setTimeout(flushPoints, 300);
    points.push([data.trial, data.epoch, value]);
    const row = [...document.querySelectorAll("#trials tbody tr")].find(
      (tr) => tr.firstChild && tr.firstChild.textContent === data.trial);
    if (row) row.querySelector(".epochs").textContent = data.epoch;
    // No refetch per epoch: scores, the table and the other charts change when a trial
    // ends, and that event refetches (one shared rebuild on the server per change).
  }

  function follow() {
    const source = new EventSource(`/api/jobs/${job}/events`);
    source.addEventListener("open", () => setLive("live", "on"));
    source.addEventListener("error", () => setLive("reconnecting…", "off"));
    source.addEventListener("hello", () => soon(0));
    source.addEventListener("epoch", (e) => onEpoch(JSON.parse(e.data).data));
    source.addEventListener("resync", () => soon(0));
    source.addEventListener("job_state", (e) => {
      const state = JSON.parse(e.data).data.state;
      if (FINAL.includes(state)) { source.close(); setLive(state, ""); }
      soon(0);
    });
    for (const type of ["trial_created", "trial_started", "trial_completed", "trial_failed",
                        "trial_retry", "trial_cancelled", "trial_stopped", "job_submitted"]) {
      source.addEventListener(type, () => soon());
    }
  }

  try { doc = await api(`/api/jobs/${job}`); } catch (err) { showError(err); return; }
  tableState.sort = [2, doc.objective.direction === "max" ? -1 : 1];  // best first
  render();
  if (FINAL.includes(doc.state)) setLive(doc.state); else follow();
}

// --- Trial -------------------------------------------------------------------------------

async function viewTrial() {
  const {job, trial} = TC;
  const chart = el("div", {class: "chart", id: "chart-trial"});
  async function refresh() {
    let doc;
    try { doc = await api(`/api/jobs/${job}/trials/${trial}`); } catch (err) {
      showError(err); return null;
    }
    const t = doc.trial;
    const metricNames = [...new Set(Object.values(doc.epochs).flatMap((m) => Object.keys(m)))];
    const epochs = Object.keys(doc.epochs).map(Number).sort((a, b) => a - b);
    main.replaceChildren(
      el("h1", {}, `Trial ${t.trial} `, badge(t.state), doc.best ? el("span", {class: "tag"}, "best") : null),
      el("p", {}, el("a", {href: `/jobs/${job}`}, `← ${doc.name} (${job})`)),
      el("div", {class: "cards"},
        el("div", {class: "card"}, el("h3", {}, "Result"),
           el("p", {}, `${doc.objective.name}: `, el("b", {}, fmt(t.score)),
              ` · best epoch ${fmt(t.best_epoch)} · epochs ${t.epochs}`),
           el("p", {}, t.resumed_from_epoch ? `resumed from epoch ${t.resumed_from_epoch}` : "")),
        el("div", {class: "card"}, el("h3", {}, "Hyperparameters"),
           el("p", {class: "hps"}, Object.entries(t.hyperparameters).map(([k, v]) =>
              el("span", {class: "hp"}, `${k}=${fmt(v)}`))))),
      chart,
      el("h2", {}, "Attempts"),
      el("table", {id: "attempts"}, el("thead", {}, el("tr", {},
          ["attempt", "worker", "start", "end", "ended", "reason"].map((h) => el("th", {}, h)))),
        el("tbody", {}, doc.attempts.map((a) => el("tr", {}, el("td", {}, fmt(a.attempt)),
          el("td", {}, a.workers ? a.workers.join(" + ") : fmt(a.worker)),
          el("td", {}, when(a.start)), el("td", {}, when(a.end)),
          el("td", {}, a.ended), el("td", {class: "error small"}, a.reason || ""))))),
      doc.ended_attempts.length ? el("p", {class: "muted"},
        `Earlier attempts ended: ${doc.ended_attempts.join("; ")}`) : null,
      t.error ? el("div", {}, el("h2", {}, "Error"), el("pre", {class: "error"}, t.error)) : null,
      el("h2", {}, "Metrics per epoch"),
      el("table", {id: "epochs"}, el("thead", {}, el("tr", {}, el("th", {}, "epoch"),
          metricNames.map((n) => el("th", {}, n)))),
        el("tbody", {}, epochs.map((e) => el("tr", {}, el("td", {}, e),
          metricNames.map((n) => el("td", {}, fmt(doc.epochs[e][n]))))))));
    plot(chart, doc.figure);
    return t.state;
  }
  const state = await refresh();
  if (state === "RUNNING" || state === "READY") {
    setLive("refreshing every 2 s", "on");
    const timer = setInterval(async () => {
      const now = await refresh();
      if (now !== "RUNNING" && now !== "READY") { clearInterval(timer); setLive(""); }
    }, 2000);
  }
}

// --- Workers -----------------------------------------------------------------------------

async function viewWorkers() {
  const holder = el("div");
  main.replaceChildren(el("h1", {}, "Workers"), holder);
  const tableState = {};
  async function refresh() {
    try {
      const rows = await api("/api/workers");
      holder.replaceChildren(
        el("p", {class: "muted"}, `${rows.length} live worker(s), `
           + `${rows.reduce((a, r) => a + r.slots, 0)} slot(s), `
           + `${rows.reduce((a, r) => a + r.busy, 0)} busy`),
        table("workers", [
          ["worker", (r) => r.worker], ["host", (r) => r.host], ["pid", (r) => r.pid],
          ["slots", (r) => r.slots], ["busy", (r) => r.busy],
          ["current trial", (r) => r.current.join(" "), (r) => el("span", {},
            r.current.map((m) => { const [j, t] = m.split("/");
              return el("a", {href: `/jobs/${j}/trials/${t}`, class: "hp"}, m); }))],
          ["heartbeat age", (r) => r.heartbeat_age_s, (r) => `${fmt(r.heartbeat_age_s)} s`],
          ["trials run", (r) => r.trials_run], ["devices", (r) => r.devices],
          ["trial memory (MB)", (r) => r.rss_mb],
        ], rows, tableState));
    } catch (err) { holder.replaceChildren(el("p", {class: "error", text: err.message})); }
  }
  await refresh();
  setInterval(refresh, 2000);
  setLive("refreshing every 2 s");
}

// --- Compare -----------------------------------------------------------------------------

async function viewCompare() {
  const jobs = (new URLSearchParams(location.search).get("jobs") || "").split(",").filter(Boolean);
  if (!jobs.length) {
    main.replaceChildren(el("h1", {}, "Compare"),
      el("p", {}, "Pick jobs in the ", el("a", {href: "/"}, "Jobs"), " view, then “Compare selected”."));
    return;
  }
  try {
    const doc = await api(`/api/compare?jobs=${jobs.map(encodeURIComponent).join(",")}`);
    const chart = el("div", {class: "chart", id: "chart-compare"});
    main.replaceChildren(el("h1", {}, "Compare"), chart, table("compare", [
      ["job", (r) => r.job, (r) => el("a", {href: `/jobs/${r.job}`}, r.job)],
      ["name", (r) => r.name], ["state", (r) => r.state, (r) => badge(r.state)],
      ["objective", (r) => `${r.objective.name} (${r.objective.direction})`],
      ["best", (r) => r.best ? r.best.score : null],
    ], doc.jobs, {}));
    plot(chart, doc.figure);
  } catch (err) { showError(err); }
}

// --- Submit ------------------------------------------------------------------------------

const EXAMPLE = `name: digits-mlp
data:
  dataset: digits
  split: {valid: 0.2, test: 0.2, seed: 42}
model:
  builtin: mlp
  task: classification
  input: flatten
  hyperparameters:
    n_hidden: {int: [1, 3]}
    n_neurons: {int: [16, 256], sampling: log}
    learning_rate: {float: [1.0e-4, 1.0e-2], sampling: log}
    optimizer: {choice: [sgd, adam]}
search:
  algorithm: random
  objective: val_accuracy
  max_trials: 8
train:
  epochs: 8
  batch_size: 32
`;

function viewSubmit() {
  if (TC.readOnly) {
    main.replaceChildren(el("h1", {}, "Submit"), el("p", {class: "error"},
      "This dashboard is read-only."));
    return;
  }
  const text = el("textarea", {id: "yaml", rows: 26, cols: 90, spellcheck: "false"});
  text.value = EXAMPLE;
  const out = el("p", {id: "submit-result"});
  const button = el("button", {id: "submit", onclick: async () => {
    button.disabled = true;
    out.className = "muted";
    out.textContent = "validating and queueing…";
    try {
      const r = await api("/api/jobs", {method: "POST", body: text.value,
        headers: {...ACTION, "Content-Type": "text/yaml"}});
      out.className = "";
      out.replaceChildren("queued ", el("a", {href: `/jobs/${r.job}`}, r.job));
    } catch (err) {
      out.className = "error";
      out.textContent = err.message;
    } finally { button.disabled = false; }
  }}, "Validate and submit");
  main.replaceChildren(el("h1", {}, "Submit a job"),
    el("p", {class: "muted"}, "Validated exactly as `tunecluster submit` does; named datasets"
       + " and built-in models (jobs with files or code: use the CLI)."), text, el("div", {}, button), out);
}

const VIEWS = {jobs: viewJobs, job: viewJob, trial: viewTrial, workers: viewWorkers,
               compare: viewCompare, submit: viewSubmit};
Promise.resolve().then(VIEWS[TC.view]).catch(showError);  // a view may be sync
