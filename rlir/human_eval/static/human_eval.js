// rlir human eval: ask for a rater id (kept in localStorage), then show the next trial this rater has
// not voted on, until none is left. body[data-state] (rater / trial / done) and body[data-trial] tell
// the tests and the bench where the page is.
"use strict";
const KEY = "rlir-human-eval-rater";
const $ = (id) => document.getElementById(id);
let rater = localStorage.getItem(KEY) || "";
let trial = null;

function show(state) {
  document.body.dataset.state = state;
  $("rater-form").hidden = state !== "rater";
  $("trial").hidden = state !== "trial";
  $("done").hidden = state !== "done";
  $("rater-box").hidden = !rater || state === "rater";
  $("rater-name").textContent = rater;
}

function message(text) {
  $("message").textContent = text || "";
  $("message").hidden = !text;
}

function setProgress(p) {
  $("progress").dataset.done = p.done;
  $("progress").dataset.total = p.total;
  $("progress-text").textContent = `${p.done} of ${p.total} done`;
  $("bar-fill").style.width = p.total ? `${(100 * p.done) / p.total}%` : "0";
}

async function api(path, body) {
  const opts = body ? { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) } : {};
  let r;
  try {
    r = await fetch(path, opts);
  } catch (e) {
    return { status: 0, data: { error: "the server cannot be reached; try again in a moment" } };
  }
  let data = {};
  try { data = await r.json(); } catch (e) { data = { error: `the server answered ${r.status}` }; }
  return { status: r.status, data };
}

async function next() {
  const { status, data } = await api(`/api/next?rater=${encodeURIComponent(rater)}`);
  if (status !== 200) { message(data.error); return; }
  setProgress(data.progress);
  if (data.done) {
    trial = null;
    document.body.dataset.trial = "";
    $("done-count").textContent = `${data.progress.total} trials`;
    show("done");
    return;
  }
  trial = data.trial;
  $("vote").reset();
  $("submit").disabled = true;
  $("video").src = trial.video;
  document.body.dataset.trial = trial.id;
  show("trial");
}

$("video").addEventListener("error", async () => {
  // an <img> cannot read the server's JSON: ask again to show why (e.g. the file went missing)
  if (!trial) return;
  const { data } = await api(trial.video);
  message(`This trial's video cannot be shown: ${data.error || "unknown error"}`);
});

$("vote").addEventListener("change", () => {
  const f = new FormData($("vote"));
  $("submit").disabled = !(f.get("follows") && f.get("looks"));
});

$("vote").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = new FormData($("vote"));
  $("submit").disabled = true;
  const { status, data } = await api("/api/votes", { rater, trial: trial.id, follows: f.get("follows"), looks: f.get("looks") });
  if (status === 201) {
    message("");
    setProgress(data.progress);
    await next();
  } else if (status === 409) {
    // voted already (another tab, a double click): the first vote stands; go on to the next trial
    message(`Not recorded: ${data.error}.`);
    await next();
  } else {
    message(`Not recorded: ${data.error}`);
    $("submit").disabled = false;
  }
});

$("rater-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = $("rater-input").value.trim();
  if (!v) return;
  rater = v;
  localStorage.setItem(KEY, rater);
  message("");
  await next();
});

$("rater-change").addEventListener("click", () => {
  $("rater-input").value = rater;
  show("rater");
  $("rater-input").focus();
});

(async () => {
  const { status, data } = await api("/api/info");
  if (status !== 200) { message(data.error); return; }
  setProgress({ done: 0, total: data.n_trials });
  if (rater) await next(); else show("rater");
  document.body.dataset.ready = "1";
})();
