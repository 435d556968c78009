"use strict";
// rlir play: one session per page load; every request (start, step, reset) goes through one queue,
// so frames arrive in the order of the key presses and a reset never races a step in flight.

const $ = (id) => document.getElementById(id);
const state = {session: null, started: false, pending: 0, chain: Promise.resolve(),
               held: new Set(), toggled: new Set(), ms: [], frames: 0};
window.playState = state;                       // read by tests/test_play.py's browser test

const MODIFIERS = new Set(["sprint", "sneak"]);  // they shape the next key's frame, not a frame of their own
const MAX_QUEUE = 8;                            // key presses waiting beyond this are dropped (held keys repeat)
const FILM_MAX = 64;
const KEY_LABEL = {ShiftLeft: "Shift", Space: "Space", ArrowUp: "↑", ArrowDown: "↓", ArrowLeft: "←", ArrowRight: "→"};
const NAME_LABEL = {forward: "forward", back: "back", left: "strafe left", right: "strafe right", sprint: "sprint",
                    sneak: "sneak", use: "use", attack: "attack", jump: "jump", drop: "drop", look_up: "look up",
                    look_down: "look down", turn_left: "turn left", turn_right: "turn right"};
// where each control sits on the pad (rows of the grid)
const LAYOUT = [["drop", "forward", "use", "attack"], ["left", "back", "right", "jump"],
                ["sprint", "sneak"], ["look_up"], ["turn_left", "look_down", "turn_right"]];
let byCode = {};

async function api(path, opts = {}) {
  const r = await fetch(path, opts);
  let body;
  try { body = await r.json(); } catch { body = {error: `the server answered HTTP ${r.status}`}; }
  if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
  return body;
}
const post = (path, json) => api(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify(json || {})});

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

function enqueue(job) {
  state.pending++;
  state.chain = state.chain.then(job).catch((e) => showError(e.message)).finally(() => { state.pending--; });
}

function setCounter(n) {
  state.frames = n;
  $("counter").textContent = `frame ${n}`;
  $("counter").dataset.frames = String(n);
}

function showFrame(r) {                         // frame 0 after start/reset: the film and counter start over
  state.started = true;
  state.ms = [];
  $("frame").src = r.frame;
  $("strip").hidden = true;
  $("placeholder").hidden = true;
  $("film").replaceChildren();
  setCounter(0);
  $("gif").hidden = false;
  $("ms").textContent = "– ms/frame";
  $("fps").textContent = "– fps";
  $("context").textContent = "";
}

async function start(body) {
  showError("");
  const path = `/api/sessions/${state.session}/start`;
  const r = body instanceof FormData ? await api(path, {method: "POST", body}) : await post(path, body);
  $("start-img").src = r.frame;
  $("start-figure").hidden = false;
  showFrame(r);
}

async function step(controls) {
  if (!state.started) { showError("pick a start frame first"); return; }
  const t0 = performance.now();
  const r = await post(`/api/sessions/${state.session}/step`, {controls});
  const rtt = performance.now() - t0;
  showError("");
  $("frame").src = r.frame;
  $("strip").src = r.strip;
  $("strip").hidden = false;
  const img = document.createElement("img");
  img.src = r.frame;
  img.className = "gen";
  img.dataset.t = String(r.t);
  img.title = `frame ${r.t}: ${controls.join(" + ") || "wait"}`;
  $("film").append(img);
  while ($("film").children.length > FILM_MAX) $("film").firstElementChild.remove();
  setCounter(r.t);
  state.ms.push(r.ms);
  if (state.ms.length > 10) state.ms.shift();
  const avg = state.ms.reduce((a, b) => a + b, 0) / state.ms.length;
  $("ms").textContent = `${r.ms.toFixed(0)} ms/frame (mean of last ${state.ms.length}: ${avg.toFixed(0)})`;
  $("fps").textContent = `${(1000 / avg).toFixed(1)} fps`;
  $("rtt").textContent = `round trip ${rtt.toFixed(0)} ms`;
  $("context").textContent = `conditioned on ${r.context} frame${r.context === 1 ? "" : "s"}` +
    (r.slid ? " (window slid)" : "");
}

function press(name) {                          // a non-modifier control: one frame with everything held
  const controls = [...new Set([name, ...state.held, ...state.toggled])].filter((n) => n !== "wait");
  enqueue(() => step(controls));
}

function buildPad(controls) {
  const known = new Map(controls.map((c) => [c.name, c]));
  byCode = {};
  for (const c of controls) byCode[c.key] = c.name;
  if (known.has("sprint")) byCode.ShiftRight = "sprint";
  byCode.KeyN = "wait";
  const pad = $("controls");
  for (const row of LAYOUT) {
    const div = document.createElement("div");
    div.className = "row";
    for (const name of row.filter((n) => known.has(n))) {
      const b = document.createElement("button");
      b.type = "button";
      b.id = `btn-${name}`;
      b.dataset.control = name;
      const key = known.get(name).key;
      b.innerHTML = `${NAME_LABEL[name] || name} <kbd>${KEY_LABEL[key] || key.replace(/^Key/, "")}</kbd>`;
      b.addEventListener("click", () => {
        if (MODIFIERS.has(name)) {
          state.toggled.has(name) ? state.toggled.delete(name) : state.toggled.add(name);
          b.classList.toggle("on", state.toggled.has(name));
        } else {
          press(name);
        }
      });
      div.append(b);
    }
    if (div.children.length) pad.append(div);
  }
}

function onKey(e, down) {
  if (e.target instanceof HTMLInputElement || e.ctrlKey || e.metaKey || e.altKey) return;
  const name = e.code === "KeyR" ? "reset" : byCode[e.code];
  if (!name) return;
  e.preventDefault();                           // arrows and space would scroll the page
  const btn = $(`btn-${name}`);
  if (!down) {
    state.held.delete(name);
    if (btn) btn.classList.remove("held");
    return;
  }
  if (btn) btn.classList.add("held");
  if (name === "reset") { if (!e.repeat) enqueue(reset); return; }
  if (MODIFIERS.has(name)) { state.held.add(name); return; }
  state.held.add(name);
  if (state.pending >= MAX_QUEUE || (e.repeat && state.pending > 0)) return;   // a held key: no backlog
  press(name);
}

async function reset() {
  if (!state.started) return;
  showFrame(await post(`/api/sessions/${state.session}/reset`));
}

async function init() {
  const info = await api("/api/info");
  const [h, w] = info.resolution;
  const s = info.sampler;
  const sampler = info.paradigm === "ar" ? `top-p ${s.top_p}, temperature ${s.temperature}` : `${s.solver} ${s.steps} steps`;
  $("model").textContent = `${info.paradigm === "ar" ? "AR" : "diffusion"} world model · ${w}x${h} · clip ` +
    `${info.clip_len} frames, keeps ${info.context} when it slides · ${sampler} · ${info.device}`;
  $("model").title = info.checkpoint;
  $("res").textContent = `${w}x${h} pixels`;
  document.documentElement.style.setProperty("--aspect", String(w / h));
  const starts = $("starts");
  if (!info.starts.length) starts.textContent = "(no --data given: upload a start frame)";
  info.starts.forEach((label, i) => {
    const img = document.createElement("img");
    img.src = `/api/starts/${i}.png`;
    img.alt = img.title = `test clip ${label}`;
    img.className = "start";
    img.dataset.start = String(i);
    img.addEventListener("click", () => {
      document.querySelectorAll("img.start.picked").forEach((x) => x.classList.remove("picked"));
      img.classList.add("picked");
      enqueue(() => start({start: i}));
    });
    starts.append(img);
  });
  buildPad(info.controls);
  $("wait").addEventListener("click", () => press("wait"));
  $("reset").addEventListener("click", () => enqueue(reset));
  $("upload").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (!file) return;
    const form = new FormData();
    form.append("png", file);
    e.target.value = "";                        // the same file may be picked again
    enqueue(() => start(form));
  });
  document.addEventListener("keydown", (e) => onKey(e, true));
  document.addEventListener("keyup", (e) => onKey(e, false));
  window.addEventListener("blur", () => {       // keys released outside the page would stay held
    state.held.clear();
    document.querySelectorAll("button.held").forEach((b) => b.classList.remove("held"));
  });
  state.session = (await post("/api/sessions")).session;
  $("gif").href = `/api/sessions/${state.session}/clip.gif`;
  document.body.dataset.ready = "1";
}

init().catch((e) => showError(`could not reach the server: ${e.message}`));
