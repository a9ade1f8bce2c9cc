// Previews of stored items, one per modality: image thumbnails, audio player and waveform,
// depth and thermal maps through colour maps, IMU as six line plots, text snippets, the first
// frame of a video. Each preview fetches the item's original from its `content_url` (with the
// API key, through api.js) and shows it from an object URL.

import * as api from "./api.js";
import { COLOUR_MAPS, drawColourMap, firstFrame, imuChannels, parseNpy } from "./media.js";

const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") el.className = v;
    // Styles through the CSSOM: the page's CSP refuses inline style attributes.
    else if (k === "style") for (const [p, x] of Object.entries(v)) el.style.setProperty(p, x);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  }
  return el;
};
export { h };

export const IMU_CHANNELS = ["ax", "ay", "az", "gx", "gy", "gz"];
const IMU_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0fa3a3"];

/// A preview of `item` ({modality, content_url}) in `box`; `large` for the detail view.
export async function preview(box, item, large = false) {
  box.replaceChildren();
  box.dataset.modality = item.modality;
  if (!item.content_url) {
    box.append(h("div", { class: "placeholder" }, "vector (no content)"));
    return;
  }
  const spinner = h("div", { class: "placeholder loading" }, "loading…");
  box.append(spinner);
  try {
    const { type, bytes } = await api.content(item.content_url);
    spinner.remove();
    const draw = RENDERERS[item.modality] || renderUnknown;
    await draw(box, { type, bytes, item, large });
  } catch (e) {
    spinner.remove();
    box.append(h("div", { class: "placeholder error" }, `cannot show: ${e.message}`));
  }
}

const RENDERERS = {
  image: renderImage,
  text: renderText,
  audio: renderAudio,
  depth: renderMap,
  thermal: renderMap,
  imu: renderImu,
  video: renderVideo,
};

/// An object URL of fetched bytes (the content routes may need the API key, which an `src`
/// attribute cannot send).
export function objectUrl(bytes, type) {
  return URL.createObjectURL(new Blob([bytes], { type }));
}

function renderImage(box, { type, bytes, item }) {
  const url = objectUrl(bytes, type);
  const img = h("img", { src: url, alt: `image ${item.id}` });
  // A shown image keeps its pixels; the URL is not needed once loaded.
  img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  img.addEventListener("error", () => URL.revokeObjectURL(url), { once: true });
  box.append(img);
}

function renderUnknown(box, { type }) {
  box.append(h("div", { class: "placeholder" }, type || "file"));
}

function renderText(box, { bytes, large }) {
  const text = new TextDecoder().decode(bytes);
  const shown = large || text.length <= 280 ? text : `${text.slice(0, 280)}…`;
  box.append(h("blockquote", { class: "snippet" }, shown));
}

async function renderAudio(box, { type, bytes, item, large }) {
  const canvas = h("canvas", { class: "wave", width: large ? 720 : 320, height: large ? 160 : 90 });
  const player = h("audio", { controls: "", preload: "none", src: objectUrl(bytes, type) });
  box.append(canvas, player);
  try {
    const ctx = new OfflineAudioContext(1, 1, 44100);
    const audio = await ctx.decodeAudioData(bytes.slice(0));
    drawWave(canvas, audio.getChannelData(0));
    box.append(h("div", { class: "caption" }, `${audio.duration.toFixed(2)} s · ${type}`));
  } catch {
    box.append(h("div", { class: "caption" }, `${type}: no waveform in this browser`));
  }
}

function drawWave(canvas, samples) {
  const g = canvas.getContext("2d");
  const { width: w, height: hgt } = canvas;
  g.fillStyle = "#0f172a";
  g.fillRect(0, 0, w, hgt);
  g.strokeStyle = "#38bdf8";
  g.beginPath();
  const per = samples.length / w;
  let peak = 1e-9;
  for (const s of samples) peak = Math.max(peak, Math.abs(s));
  for (let x = 0; x < w; x++) {
    let lo = 1;
    let hi = -1;
    const end = Math.min(samples.length, Math.floor((x + 1) * per));
    for (let i = Math.floor(x * per); i < end; i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    if (lo > hi) continue;
    g.moveTo(x + 0.5, hgt / 2 - (hi / peak) * (hgt / 2 - 2));
    g.lineTo(x + 0.5, hgt / 2 - (lo / peak) * (hgt / 2 - 2) + 1);
  }
  g.stroke();
}

async function renderMap(box, { type, bytes, item }) {
  const map = COLOUR_MAPS[item.modality];
  // Depth: near is warm, far is cool, missing pixels black. Thermal: hot is bright.
  const holes = item.modality === "depth";
  const canvas = h("canvas", { class: "map" });
  let range;
  if (type === "application/x-npy") {
    const { shape, data } = parseNpy(bytes);
    const [hh, ww] = shape.slice(-2);
    range = drawColourMap(canvas, data, ww, hh, map, holes, holes);
  } else if (type.startsWith("image/") && type !== "image/tiff") {
    const bitmap = await createImageBitmap(new Blob([bytes], { type }));
    const tmp = h("canvas", { width: bitmap.width, height: bitmap.height });
    const g = tmp.getContext("2d");
    g.drawImage(bitmap, 0, 0);
    const px = g.getImageData(0, 0, bitmap.width, bitmap.height).data;
    // The browser hands 16-bit greyscale over as its top 8 bits: enough for a picture.
    const values = new Float64Array(bitmap.width * bitmap.height);
    for (let i = 0; i < values.length; i++) values[i] = px[i * 4];
    range = drawColourMap(canvas, values, bitmap.width, bitmap.height, map, holes, holes);
  } else {
    box.append(h("div", { class: "placeholder" }, `${item.modality} (${type}): no preview`));
    return;
  }
  box.append(canvas, h("div", { class: "caption" },
    `${item.modality} · ${type === "application/x-npy" ? `${fmt(range.lo)}–${fmt(range.hi)} m` : type}`));
}

const fmt = (x) => (Math.abs(x) >= 100 ? x.toFixed(0) : x.toPrecision(3));

function renderImu(box, { type, bytes, large }) {
  const ch = imuChannels(type, bytes);
  const canvas = h("canvas", { class: "imu", width: large ? 720 : 320, height: large ? 300 : 132 });
  const g = canvas.getContext("2d");
  const { width: w, height: hgt } = canvas;
  g.fillStyle = "#ffffff";
  g.fillRect(0, 0, w, hgt);
  // One lane per channel, each scaled to its own range (accelerometer values sit near g,
  // gyroscope values near 0: a shared axis would flatten them).
  const lane = hgt / 6;
  ch.forEach((values, c) => {
    let lo = Infinity;
    let hi = -Infinity;
    for (const x of values) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
    const span = hi > lo ? hi - lo : 1;
    const top = c * lane + 2;
    const ht = lane - 4;
    if (c) {
      g.fillStyle = "#e2e8f0";
      g.fillRect(0, c * lane, w, 1);
    }
    g.strokeStyle = IMU_COLOURS[c];
    g.lineWidth = large ? 1.5 : 1;
    g.beginPath();
    const n = values.length;
    for (let x = 0; x < w; x++) {
      const v = values[Math.min(n - 1, Math.floor((x / w) * n))];
      const y = top + ht - ((v - lo) / span) * ht;
      if (x === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    }
    g.stroke();
    if (large) {
      g.fillStyle = "#64748b";
      g.font = "11px system-ui, sans-serif";
      g.fillText(`${IMU_CHANNELS[c]}  ${fmt(lo)} … ${fmt(hi)}`, 4, top + 10);
    }
  });
  const legend = h("div", { class: "legend" },
    IMU_CHANNELS.map((name, i) => h("span", { style: { "--c": IMU_COLOURS[i] } }, name)));
  box.append(canvas, legend, h("div", { class: "caption" }, `${ch[0].length} samples`));
}

async function renderVideo(box, { bytes }) {
  const frame = await firstFrame(bytes);
  if (!frame) {
    box.append(h("div", { class: "placeholder" }, "video (ZIP of frames)"));
    return;
  }
  const url = URL.createObjectURL(frame);
  box.append(h("img", { src: url, alt: "first frame" }),
    h("div", { class: "caption" }, "video · first frame"));
}
