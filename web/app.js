// The demo page: collections, uploads, searches and the detail view, over the public REST API
// (api.js). State is a few variables; the DOM is built with `h` and updated in place.

import * as api from "./api.js";
import { filesOfEntry, guessModality, startRecording } from "./media.js";
import { h, objectUrl, preview } from "./render.js";

const $ = (id) => document.getElementById(id);
const MODALITY_ORDER = ["image", "text", "audio", "video", "depth", "thermal", "imu", "vector"];

const state = {
  models: [],
  collection: null, // the selected collection as the server describes it
  terms: [], // extra query terms: {kind: "text"|"file"|"item", weight, text|file|id, vector?}
  recorder: null,
  detail: null, // the item shown in the dialog
};

function showBanner(message) {
  const b = $("banner");
  b.textContent = message || "";
  b.hidden = !message;
}

function setStatus(text, kind = "") {
  const s = $("status");
  s.textContent = text;
  s.className = `status ${kind}`;
}

const modelOf = (name) => state.models.find((m) => m.name === name);

// ---------------------------------------------------------------- API key

// One key dialog at a time: calls that meet a 401 while it is open wait for the same answer.
let keyAnswer = null;
let keyResolve = null;

function askForKey(message) {
  if (keyAnswer) return keyAnswer;
  keyAnswer = new Promise((resolve) => {
    keyResolve = resolve;
    $("key-message").textContent = message;
    $("key-input").value = "";
    $("key-dialog").showModal();
    $("key-input").focus();
  });
  return keyAnswer;
}

function answerKey(key) {
  const resolve = keyResolve;
  keyAnswer = null;
  keyResolve = null;
  if ($("key-dialog").open) $("key-dialog").close();
  if (resolve) resolve(key);
  $("key-button").hidden = !api.hasKey() && key === null;
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key-input").value.trim();
  if (key) answerKey(key);
});
$("key-cancel").addEventListener("click", () => answerKey(null));
$("key-dialog").addEventListener("cancel", (e) => {
  e.preventDefault();
  answerKey(null);
});
$("key-button").addEventListener("click", async () => {
  api.setKey("");
  showBanner("");
  try {
    await loadCollections(state.collection && state.collection.name);
  } catch (e) {
    showBanner(e.message);
  }
});
api.onKeyNeeded(askForKey);
$("key-button").hidden = !api.hasKey();

// ---------------------------------------------------------------- collections

async function loadCollections(select) {
  const [{ models }, { collections }] = await Promise.all([api.models(), api.collections()]);
  state.models = models;
  $("create-model").replaceChildren(
    ...models.map((m) => h("option", { value: m.name }, `${m.name} (${m.family}, ${m.dim}-d)`)),
  );
  const sel = $("collection");
  sel.replaceChildren(...collections.map((c) => h("option", { value: c.name }, c.name)));
  sel.disabled = !collections.length;
  const want = select || localStorage.getItem("omnibind.collection");
  const chosen = collections.find((c) => c.name === want) || collections[0];
  if (chosen) {
    sel.value = chosen.name;
    useCollection(chosen);
  } else {
    useCollection(null);
    openCreate();
  }
}

function useCollection(c) {
  state.collection = c;
  document.body.classList.toggle("no-collection", !c);
  if (c) localStorage.setItem("omnibind.collection", c.name);
  renderCounts();
  renderModalityFilter();
  $("results").replaceChildren();
  setStatus(c ? "Type a query, drop a file on the search box, or browse the collection." : "");
}

async function refreshCollection() {
  if (!state.collection) return;
  try {
    useCounts(await api.collection(state.collection.name));
  } catch (e) {
    showBanner(e.message);
  }
}

function useCounts(c) {
  state.collection = c;
  renderCounts();
}

function renderCounts() {
  const c = state.collection;
  const box = $("counts");
  if (!c) {
    box.replaceChildren(h("span", { class: "hint" }, "no collection yet"));
    return;
  }
  const chips = MODALITY_ORDER.filter((m) => c.counts[m]).map((m) =>
    h("span", { class: `chip m-${m}`, "data-modality": m }, `${m} `, h("b", {}, c.counts[m])));
  box.replaceChildren(
    h("span", { class: "model", title: "model of this collection" }, c.model),
    ...chips,
    h("span", { class: "chip total" }, "total ", h("b", { id: "total" }, c.total)),
  );
}

function renderModalityFilter() {
  const fs = $("modality-filter");
  const m = state.collection && modelOf(state.collection.model);
  const list = m ? m.modalities : [];
  fs.replaceChildren(
    h("legend", {}, "Result modality"),
    ...list.map((name) =>
      h("label", { class: "check" }, h("input", { type: "checkbox", value: name }), name)),
  );
}

function openCreate() {
  $("create-form").hidden = false;
  $("create-error").hidden = true;
  const lines = state.models.map((m) => `${m.name}: ${m.modalities.join(", ")}`);
  $("create-models").textContent = lines.length ? `Models: ${lines.join(" · ")}` : "The server has no model loaded.";
  $("create-name").focus();
}

$("new-collection").addEventListener("click", openCreate);
$("create-cancel").addEventListener("click", () => { $("create-form").hidden = true; });
$("create-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("create-name").value.trim();
  try {
    await api.createCollection(name, $("create-model").value);
    $("create-form").hidden = true;
    $("create-name").value = "";
    await loadCollections(name);
  } catch (err) {
    $("create-error").textContent = err.message;
    $("create-error").hidden = false;
  }
});
$("collection").addEventListener("change", async (e) => {
  try {
    useCollection(await api.collection(e.target.value));
  } catch (err) {
    showBanner(err.message);
  }
});

// ---------------------------------------------------------------- uploads

function uploadMetadata() {
  const raw = $("upload-meta").value.trim();
  if (!raw) return {};
  let v;
  try {
    v = JSON.parse(raw);
  } catch (e) {
    throw new Error(`metadata is not valid JSON: ${e.message}`);
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) throw new Error("metadata must be a JSON object");
  return v;
}

async function uploadAll(entries) {
  if (!state.collection) {
    showBanner("Create or choose a collection first.");
    return;
  }
  let meta;
  try {
    meta = uploadMetadata();
  } catch (e) {
    showBanner(e.message);
    return;
  }
  showBanner("");
  const name = state.collection.name;
  const chosen = $("upload-modality").value;
  const jobs = entries.map(({ file, path }) => {
    const bar = h("progress", { max: 1, value: 0 });
    const status = h("span", { class: "state" }, "waiting");
    const row = h("li", { class: "upload" },
      h("span", { class: "name", title: path }, path), bar, status);
    $("uploads").prepend(row);
    return { file, path, row, bar, status };
  });
  const run = async (job) => {
    const modality = chosen || (await guessModality(job.file));
    const form = new FormData();
    form.append("file", job.file, job.file.name);
    if (modality) form.append("modality", modality);
    form.append("metadata", JSON.stringify({ path: job.path, ...meta }));
    job.status.textContent = "uploading";
    job.row.dataset.state = "uploading";
    try {
      const res = await api.upload(name, form, (f) => {
        job.bar.value = f;
        if (f >= 1) job.status.textContent = "embedding";
      });
      const it = res.items[0];
      job.bar.value = 1;
      job.row.dataset.state = "done";
      job.row.dataset.id = it.id;
      job.status.replaceChildren(
        h("span", { class: `badge m-${it.modality}` }, it.modality), ` ${it.status} `,
        h("button", { type: "button", class: "link", onclick: () => openDetail(it.id) }, "open"));
    } catch (e) {
      job.row.dataset.state = "error";
      job.bar.remove();
      job.status.replaceChildren(h("span", { class: "error" }, e.message));
    }
  };
  // One request per file, so that each file gets its own progress and its own error (an
  // upload request is all or nothing); two at a time, as the server embeds one batch per model
  // at a time anyway.
  const queue = [...jobs];
  await Promise.all([0, 1].map(async () => {
    while (queue.length) await run(queue.shift());
  }));
  await refreshCollection();
}

const pickFiles = (input) => {
  const files = [...input.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name }));
  input.value = "";
  if (files.length) uploadAll(files);
};
$("pick-files").addEventListener("click", () => $("file-input").click());
$("pick-folder").addEventListener("click", () => $("folder-input").click());
$("file-input").addEventListener("change", (e) => pickFiles(e.target));
$("folder-input").addEventListener("change", (e) => pickFiles(e.target));

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry());
  let files;
  if (entries.length && entries.every(Boolean)) {
    files = (await Promise.all(entries.map((en) => filesOfEntry(en)))).flat();
  } else {
    files = [...e.dataTransfer.files].map((f) => ({ file: f, path: f.name }));
  }
  if (files.length) uploadAll(files);
});

$("text-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text-item").value.trim();
  if (!text || !state.collection) return;
  let meta;
  try {
    meta = uploadMetadata();
  } catch (err) {
    showBanner(err.message);
    return;
  }
  const status = h("span", { class: "state" }, "embedding");
  const row = h("li", { class: "upload" }, h("span", { class: "name" }, `“${text.slice(0, 40)}”`), status);
  $("uploads").prepend(row);
  try {
    const item = { text };
    if (Object.keys(meta).length) item.metadata = meta;
    const res = await api.addTexts(state.collection.name, [item]);
    const it = res.items[0];
    row.dataset.state = "done";
    row.dataset.id = it.id;
    status.replaceChildren(h("span", { class: "badge m-text" }, "text"), ` ${it.status} `,
      h("button", { type: "button", class: "link", onclick: () => openDetail(it.id) }, "open"));
    $("text-item").value = "";
    await refreshCollection();
  } catch (err) {
    row.dataset.state = "error";
    status.replaceChildren(h("span", { class: "error" }, err.message));
  }
});

// ---------------------------------------------------------------- query terms

function addTerm(term) {
  state.terms.push({ weight: 1, ...term });
  renderTerms();
}

function renderTerms() {
  $("terms").replaceChildren(...state.terms.map((t, i) => {
    let what;
    if (t.kind === "text") {
      what = h("input", { class: "grow", value: t.text, placeholder: "text", "aria-label": "term text",
        oninput: (e) => { t.text = e.target.value; } });
    } else if (t.kind === "file") {
      what = h("span", { class: "grow" }, `${t.recorded ? "🎤 " : "📄 "}${t.file.name}`,
        t.modality ? h("span", { class: `badge m-${t.modality}` }, t.modality) : "");
    } else {
      what = h("span", { class: "grow" }, "item ", h("code", {}, t.id),
        t.modality ? h("span", { class: `badge m-${t.modality}` }, t.modality) : "");
    }
    const weight = h("input", { type: "number", step: "0.1", value: t.weight, class: "weight",
      "aria-label": "weight", title: "weight: negative pushes results away",
      oninput: (e) => { t.weight = Number(e.target.value); } });
    return h("li", { class: `term ${t.weight < 0 ? "negative" : ""}` }, what,
      h("label", { class: "w" }, "weight ", weight),
      h("button", { type: "button", class: "quiet", "aria-label": "remove term",
        onclick: () => { state.terms.splice(i, 1); renderTerms(); } }, "✕"));
  }));
}

$("add-text-term").addEventListener("click", () => addTerm({ kind: "text", text: "", weight: -0.5 }));
$("add-file-term").addEventListener("click", () => $("term-file").click());
$("term-file").addEventListener("change", async (e) => {
  for (const file of e.target.files) {
    addTerm({ kind: "file", file, modality: $("upload-modality").value || (await guessModality(file)) });
  }
  e.target.value = "";
});
$("clear-terms").addEventListener("click", () => {
  state.terms = [];
  $("q").value = "";
  renderTerms();
});
$("record").addEventListener("click", async () => {
  const btn = $("record");
  if (state.recorder) {
    const rec = state.recorder;
    state.recorder = null;
    btn.textContent = "● Record";
    btn.setAttribute("aria-pressed", "false");
    btn.classList.remove("recording");
    try {
      const wav = await rec.stop();
      const n = state.terms.filter((t) => t.recorded).length + 1;
      addTerm({ kind: "file", file: new File([wav], `recording-${n}.wav`, { type: "audio/wav" }),
        modality: "audio", recorded: true });
    } catch (e) {
      setStatus(e.message, "error");
    }
    return;
  }
  try {
    state.recorder = await startRecording();
    btn.textContent = "■ Stop";
    btn.setAttribute("aria-pressed", "true");
    btn.classList.add("recording");
  } catch (e) {
    setStatus(`Recording failed: ${e.message}`, "error");
  }
});

// A file dropped on the search panel becomes a query term.
const searchPanel = document.querySelector(".panel.search");
searchPanel.addEventListener("dragover", (e) => { e.preventDefault(); searchPanel.classList.add("over"); });
searchPanel.addEventListener("dragleave", () => searchPanel.classList.remove("over"));
searchPanel.addEventListener("drop", async (e) => {
  e.preventDefault();
  searchPanel.classList.remove("over");
  for (const file of e.dataTransfer.files) {
    addTerm({ kind: "file", file, modality: await guessModality(file) });
  }
});

// ---------------------------------------------------------------- search

function currentFilter() {
  const filter = {};
  const mods = [...$("modality-filter").querySelectorAll("input:checked")].map((i) => i.value);
  if (mods.length) filter.modality = mods;
  const raw = $("meta-filter").value.trim();
  if (raw) {
    try {
      filter.metadata = JSON.parse(raw);
    } catch (e) {
      throw new Error(`the metadata filter is not valid JSON: ${e.message}`);
    }
  }
  return Object.keys(filter).length ? filter : null;
}

function queryTerms() {
  const terms = [];
  const q = $("q").value.trim();
  if (q) terms.push({ kind: "text", text: q, weight: 1 });
  for (const t of state.terms) {
    if (t.kind === "text" && !t.text.trim()) continue;
    terms.push(t);
  }
  return terms;
}

// Each search or listing takes a ticket; an answer that arrives after a newer request was made
// is dropped, so that a slow query never overwrites the results of a later one.
let ticket = 0;

async function runSearch() {
  const c = state.collection;
  if (!c) return;
  const mine = ++ticket;
  const terms = queryTerms();
  if (!terms.length) {
    await browse();
    return;
  }
  const t0 = performance.now();
  setStatus("Searching…", "loading");
  $("results").setAttribute("aria-busy", "true");
  try {
    const filter = currentFilter();
    const k = Math.max(1, Math.min(200, Number($("k").value) || 12));
    let res;
    if (terms.length === 1 && terms[0].kind === "file" && terms[0].weight > 0) {
      // One file: the server's multipart search.
      const t = terms[0];
      const form = new FormData();
      form.append("file", t.file, t.file.name);
      if (t.modality) form.append("modality", t.modality);
      form.append("k", String(k));
      if (filter) form.append("filter", JSON.stringify(filter));
      res = await api.searchForm(c.name, form);
    } else {
      // Several weighted terms: files are embedded first (POST /v1/embed) and sent as vectors.
      const query = [];
      for (const t of terms) {
        if (t.kind === "text") query.push({ text: t.text, weight: t.weight });
        else if (t.kind === "item") query.push({ item: t.id, weight: t.weight });
        else {
          if (!t.vector) {
            const form = new FormData();
            form.append("model", c.model);
            form.append("file", t.file, t.file.name);
            if (t.modality) form.append("modality", t.modality);
            t.vector = (await api.embedForm(form)).vector;
          }
          query.push({ vector: t.vector, weight: t.weight });
        }
      }
      const body = { query, k };
      if (filter) body.filter = filter;
      res = await api.search(c.name, body);
    }
    if (mine !== ticket) return;
    const ms = Math.round(performance.now() - t0);
    const what = terms.length === 1 ? "the query" : `${terms.length} terms`;
    setStatus(res.hits.length
      ? `${res.hits.length} result${res.hits.length > 1 ? "s" : ""} for ${what} in ${ms} ms`
      : "No results. Try another query, or remove filters.", res.hits.length ? "" : "empty");
    renderResults(res.hits, true);
  } catch (e) {
    if (mine !== ticket) return;
    setStatus(`Error: ${e.message}`, "error");
    $("results").replaceChildren();
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

const PAGE = 60;

async function browse(cursor) {
  const c = state.collection;
  if (!c) return;
  const mine = ++ticket;
  setStatus("Loading items…", "loading");
  try {
    const page = await api.items(c.name, PAGE, cursor);
    if (mine !== ticket) return;
    const shown = (cursor ? $("results").querySelectorAll(".card").length : 0) + page.items.length;
    setStatus(shown
      ? `${shown} of ${c.total} items (id order)`
      : "This collection is empty: add some items on the left.", shown ? "" : "empty");
    renderResults(page.items, false, Boolean(cursor));
    if (page.next_cursor) {
      $("results").append(h("button", { type: "button", class: "load-more",
        onclick: (e) => { e.target.remove(); browse(page.next_cursor); } }, "Load more"));
    }
  } catch (e) {
    if (mine !== ticket) return;
    setStatus(`Error: ${e.message}`, "error");
  }
}

$("search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
$("browse").addEventListener("click", () => browse());

function moreLikeThis(hit) {
  state.terms = [{ kind: "item", id: hit.id, modality: hit.modality, weight: 1 }];
  $("q").value = "";
  renderTerms();
  runSearch();
}

function renderResults(hits, scored, append = false) {
  const cards = hits.map((hit) => {
    const box = h("div", { class: "preview", role: "button", tabindex: "0", title: "open",
      onclick: () => openDetail(hit.id),
      onkeydown: (e) => { if (e.key === "Enter") openDetail(hit.id); } });
    preview(box, hit);
    return h("article", { class: "card", "data-id": hit.id, "data-modality": hit.modality },
      box,
      h("div", { class: "line" },
        h("span", { class: `badge m-${hit.modality}` }, hit.modality),
        scored ? h("span", { class: "score", title: "cosine similarity" }, hit.score.toFixed(3)) : "",
        h("span", { class: "id", title: hit.id }, hit.metadata && hit.metadata.path ? hit.metadata.path : hit.id)),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "more", onclick: () => moreLikeThis(hit) }, "More like this"),
        h("button", { type: "button", title: "add to the query", "aria-label": "add to the query",
          onclick: () => addTerm({ kind: "item", id: hit.id, modality: hit.modality, weight: 1 }) }, "+"),
        h("button", { type: "button", title: "subtract from the query", "aria-label": "subtract from the query",
          onclick: () => addTerm({ kind: "item", id: hit.id, modality: hit.modality, weight: -1 }) }, "−"),
        h("button", { type: "button", class: "danger delete", onclick: () => removeItem(hit.id) }, "Delete")));
  });
  if (append) $("results").append(...cards);
  else $("results").replaceChildren(...cards);
}

async function removeItem(id) {
  const c = state.collection;
  try {
    await api.deleteItem(c.name, id);
    document.querySelectorAll(".card").forEach((el) => { if (el.dataset.id === id) el.remove(); });
    state.terms = state.terms.filter((t) => !(t.kind === "item" && t.id === id));
    renderTerms();
    if ($("detail").open && state.detail && state.detail.id === id) $("detail").close();
    setStatus(`Deleted ${id}.`);
    await refreshCollection();
  } catch (e) {
    setStatus(`Error: ${e.message}`, "error");
  }
}

// ---------------------------------------------------------------- detail and labels

// Types a browser tab may show from an object URL; anything else is downloaded, never rendered
// (an HTML or SVG file opened from the page's origin could run script there).
const SHOWN_TYPES = /^(image\/(png|jpeg|gif|webp|tiff)|audio\/[a-z0-9.+-]+|text\/plain)(;|$)/;
let originalUrl = null;

/// "Open original": the item's bytes fetched with the API key, behind an object URL.
async function setOriginalLink(item) {
  const open = $("detail-open");
  if (originalUrl) URL.revokeObjectURL(originalUrl);
  originalUrl = null;
  open.removeAttribute("href");
  open.removeAttribute("download");
  open.hidden = !item.content_url;
  if (!item.content_url) return;
  try {
    const { type, bytes } = await api.content(item.content_url);
    const shown = SHOWN_TYPES.test(type);
    originalUrl = objectUrl(bytes, shown ? type : "application/octet-stream");
    open.href = originalUrl;
    if (!shown) open.download = item.id;
  } catch {
    open.hidden = true;
  }
}

async function openDetail(id) {
  const c = state.collection;
  const dlg = $("detail");
  $("detail-error").hidden = true;
  $("classify-result").replaceChildren();
  try {
    const item = await api.item(c.name, id);
    state.detail = item;
    $("detail-title").replaceChildren(h("span", { class: `badge m-${item.modality}` }, item.modality), ` ${item.id}`);
    setOriginalLink(item);
    const info = [
      ["type", item.content_type || (item.text !== undefined ? "text" : "vector")],
      ["size", `${item.content_len} bytes`],
      ["added", new Date(item.created_at).toLocaleString()],
      ["model", item.model],
    ];
    $("detail-info").replaceChildren(...info.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    $("detail-meta").textContent = JSON.stringify(item.metadata ?? {}, null, 2);
    if (!dlg.open) dlg.showModal();
    preview($("detail-preview"), item, true);
  } catch (e) {
    setStatus(`Error: ${e.message}`, "error");
  }
}

$("detail-close").addEventListener("click", () => $("detail").close());
$("detail").addEventListener("click", (e) => { if (e.target === $("detail")) $("detail").close(); });
$("detail-more").addEventListener("click", () => {
  const item = state.detail;
  $("detail").close();
  moreLikeThis(item);
});
$("detail-delete").addEventListener("click", () => removeItem(state.detail.id));

$("classify-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const item = state.detail;
  const labels = $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  const template = $("template").value.trim();
  const model = state.collection.model;
  const out = $("classify-result");
  $("detail-error").hidden = true;
  out.replaceChildren(h("li", { class: "hint" }, "classifying…"));
  try {
    let res;
    if (item.modality === "text") {
      const body = { model, text: item.text, labels };
      if (template) body.template = template;
      res = await api.classify(body);
    } else {
      const { type, bytes } = await api.content(item.content_url);
      const form = new FormData();
      form.append("model", model);
      form.append("file", new Blob([bytes], { type }), item.id);
      form.append("modality", item.modality);
      form.append("labels", JSON.stringify(labels));
      if (template) form.append("template", template);
      res = await api.classifyForm(form);
    }
    out.replaceChildren(...res.labels.map((l) =>
      h("li", { class: "bar", style: { "--p": `${(l.probability * 100).toFixed(1)}%` } },
        h("span", { class: "label" }, l.label),
        h("span", { class: "p" }, `${(l.probability * 100).toFixed(1)} %`))));
  } catch (err) {
    out.replaceChildren();
    $("detail-error").textContent = err.message;
    $("detail-error").hidden = false;
  }
});

// ---------------------------------------------------------------- start

loadCollections().catch((e) => showBanner(`The server could not be read: ${e.message}`));
