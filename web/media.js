// Decoding and encoding done in the page: NumPy .npy arrays, IMU CSV, 16-bit PCM WAV (for
// microphone recordings: the server reads WAV, FLAC, MP3 and Ogg Vorbis, not WebM/Opus), the
// first frame of a ZIP of frames, colour maps, and the modality a file most likely holds.

/// Parses a little-endian .npy file: {shape, data: Float64Array} (C or Fortran order).
export function parseNpy(buf) {
  const u8 = new Uint8Array(buf);
  const magic = String.fromCharCode(...u8.slice(1, 6));
  if (u8[0] !== 0x93 || magic !== "NUMPY") throw new Error("not a .npy file");
  const major = u8[6];
  const view = new DataView(buf);
  const hlen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const hstart = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(u8.slice(hstart, hstart + hlen));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1]
    .split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  const n = shape.reduce((a, b) => a * b, 1);
  const off = hstart + hlen;
  const kinds = {
    "<f4": [4, (o) => view.getFloat32(o, true)],
    "<f8": [8, (o) => view.getFloat64(o, true)],
    "<f2": [2, (o) => half(view.getUint16(o, true))],
    "<i2": [2, (o) => view.getInt16(o, true)],
    "<u2": [2, (o) => view.getUint16(o, true)],
    "<i4": [4, (o) => view.getInt32(o, true)],
    "|u1": [1, (o) => view.getUint8(o)],
  };
  const kind = kinds[descr];
  if (!kind) throw new Error(`.npy type ${descr} is not shown here`);
  const [size, read] = kind;
  let data = new Float64Array(n);
  for (let i = 0; i < n; i++) data[i] = read(off + i * size);
  if (fortran && shape.length === 2) {
    const [r, c] = shape;
    const t = new Float64Array(n);
    for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) t[i * c + j] = data[j * r + i];
    data = t;
  }
  return { shape, data };
}

function half(h) {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/// The six IMU channels (ax, ay, az, gx, gy, gz), each an array, from CSV text or .npy bytes.
export function imuChannels(type, bytes) {
  if (type === "application/x-npy") {
    const { shape, data } = parseNpy(bytes);
    if (shape.length !== 2 || (shape[0] !== 6 && shape[1] !== 6)) {
      throw new Error(`IMU array of shape [${shape}]`);
    }
    // As the server reads it: [6, T] first, else [T, 6].
    const channelsFirst = shape[0] === 6;
    const t = channelsFirst ? shape[1] : shape[0];
    const ch = Array.from({ length: 6 }, () => new Float64Array(t));
    for (let i = 0; i < t; i++) {
      for (let c = 0; c < 6; c++) {
        ch[c][i] = channelsFirst ? data[c * t + i] : data[i * 6 + c];
      }
    }
    return ch;
  }
  const rows = new TextDecoder().decode(bytes).split(/\r?\n/)
    .map((l) => l.trim()).filter(Boolean)
    .map((l) => l.split(",").map(Number));
  const numeric = rows.filter((r) => r.every((x) => Number.isFinite(x)));
  if (!numeric.length) throw new Error("no numeric rows");
  const skip = numeric[0].length === 7 ? 1 : 0;
  return Array.from({ length: 6 }, (_, c) => Float64Array.from(numeric, (r) => r[c + skip]));
}

/// A mono 16-bit PCM WAV file of an AudioBuffer (channels averaged).
export function encodeWav(audio) {
  const n = audio.length;
  const rate = audio.sampleRate;
  const chans = Array.from({ length: audio.numberOfChannels }, (_, i) => audio.getChannelData(i));
  const buf = new ArrayBuffer(44 + n * 2);
  const v = new DataView(buf);
  const str = (o, s) => [...s].forEach((c, i) => v.setUint8(o + i, c.charCodeAt(0)));
  str(0, "RIFF");
  v.setUint32(4, 36 + n * 2, true);
  str(8, "WAVE");
  str(12, "fmt ");
  v.setUint32(16, 16, true);
  v.setUint16(20, 1, true); // PCM
  v.setUint16(22, 1, true); // mono
  v.setUint32(24, rate, true);
  v.setUint32(28, rate * 2, true);
  v.setUint16(32, 2, true);
  v.setUint16(34, 16, true);
  str(36, "data");
  v.setUint32(40, n * 2, true);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (const c of chans) s += c[i];
    s = Math.max(-1, Math.min(1, s / chans.length));
    v.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buf], { type: "audio/wav" });
}

/// Records from the microphone until `stop()` is called; resolves to a WAV Blob.
export async function startRecording() {
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    throw new Error("this browser cannot record here (a microphone needs https or localhost)");
  }
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const rec = new MediaRecorder(stream);
  const chunks = [];
  rec.ondataavailable = (e) => chunks.push(e.data);
  const done = new Promise((resolve, reject) => {
    rec.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      try {
        const blob = new Blob(chunks, { type: rec.mimeType });
        const ctx = new AudioContext();
        const audio = await ctx.decodeAudioData(await blob.arrayBuffer());
        ctx.close();
        resolve(encodeWav(audio));
      } catch (e) {
        reject(new Error(`the recording could not be decoded: ${e.message}`));
      }
    };
  });
  rec.start();
  return { stop: () => { rec.stop(); return done; } };
}

/// The first picture of a ZIP of frames (natural order of paths), as a Blob, or null.
export async function firstFrame(buf) {
  const v = new DataView(buf);
  let eocd = -1;
  for (let i = buf.byteLength - 22; i >= Math.max(0, buf.byteLength - 65557); i--) {
    if (v.getUint32(i, true) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) return null;
  const count = v.getUint16(eocd + 10, true);
  let p = v.getUint32(eocd + 16, true);
  const entries = [];
  for (let i = 0; i < count && v.getUint32(p, true) === 0x02014b50; i++) {
    const method = v.getUint16(p + 10, true);
    const csize = v.getUint32(p + 20, true);
    const nlen = v.getUint16(p + 28, true);
    const xlen = v.getUint16(p + 30, true);
    const clen = v.getUint16(p + 32, true);
    const local = v.getUint32(p + 42, true);
    const name = new TextDecoder().decode(new Uint8Array(buf, p + 46, nlen));
    const base = name.split("/").pop();
    if (/\.(png|jpe?g|webp|gif)$/i.test(name) && !name.startsWith("__MACOSX/") && !base.startsWith(".")) {
      entries.push({ name, method, csize, local });
    }
    p += 46 + nlen + xlen + clen;
  }
  if (!entries.length) return null;
  const collator = new Intl.Collator(undefined, { numeric: true });
  entries.sort((a, b) => collator.compare(a.name, b.name));
  const e = entries[0];
  const start = e.local + 30 + v.getUint16(e.local + 26, true) + v.getUint16(e.local + 28, true);
  const raw = new Blob([new Uint8Array(buf, start, e.csize)]);
  const ext = e.name.split(".").pop().toLowerCase();
  const type = { png: "image/png", gif: "image/gif", webp: "image/webp" }[ext] || "image/jpeg";
  if (e.method === 0) return new Blob([raw], { type });
  if (e.method !== 8) return null;
  const out = raw.stream().pipeThrough(new DecompressionStream("deflate-raw"));
  return new Blob([await new Response(out).arrayBuffer()], { type });
}

// Colour maps: a few control points, interpolated linearly (matplotlib's turbo and inferno,
// sampled).
const TURBO = [[48, 18, 59], [70, 107, 227], [40, 187, 236], [49, 242, 153], [162, 252, 60],
  [237, 208, 58], [251, 128, 34], [208, 47, 5], [122, 4, 3]];
const INFERNO = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
  [245, 125, 21], [250, 193, 39], [252, 255, 164]];
export const COLOUR_MAPS = { depth: TURBO, thermal: INFERNO };

function colour(map, t) {
  const x = Math.max(0, Math.min(1, t)) * (map.length - 1);
  const i = Math.min(map.length - 2, Math.floor(x));
  const f = x - i;
  return map[i].map((c, k) => Math.round(c + (map[i + 1][k] - c) * f));
}

/// Draws a map of values (row-major, `w` x `h`) through a colour map, scaled from the smallest
/// to the largest finite value (reversed with `invert`, so that near depths are warm);
/// `holes` (value 0, depth's "no measurement") are drawn black.
export function drawColourMap(canvas, values, w, h, map, holes, invert = false) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const x of values) {
    if (!Number.isFinite(x) || (holes && x === 0)) continue;
    if (x < lo) lo = x;
    if (x > hi) hi = x;
  }
  const span = hi > lo ? hi - lo : 1;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const x = values[i];
    const [r, g, b] = !Number.isFinite(x) || (holes && x === 0)
      ? [0, 0, 0] : colour(map, invert ? (hi - x) / span : (x - lo) / span);
    img.data.set([r, g, b, 255], i * 4);
  }
  ctx.putImageData(img, 0, 0);
  return { lo, hi };
}

/// Guesses the modality to send with a file whose bytes the server cannot tell on its own
/// (`.npy`, TIFF, IMU CSV); null leaves the detection to the server.
export async function guessModality(file) {
  const name = file.name.toLowerCase();
  if (name.endsWith(".csv")) return "imu";
  if (name.endsWith(".tif") || name.endsWith(".tiff")) return "thermal";
  if (name.endsWith(".npy")) {
    try {
      const head = await file.slice(0, 256).arrayBuffer();
      const text = new TextDecoder().decode(head);
      const shape = /'shape':\s*\(([^)]*)\)/.exec(text)[1]
        .split(",").map((s) => s.trim()).filter(Boolean).map(Number);
      if (shape.length === 2 && (shape[0] === 6 || shape[1] === 6)) return "imu";
    } catch {
      // Leave it to depth.
    }
    return "depth";
  }
  if (/depth/.test(name)) return "depth";
  if (/thermal/.test(name)) return "thermal";
  return null;
}

/// Every file below a dropped entry (folders are walked; hidden files skipped), with its path.
export async function filesOfEntry(entry, prefix = "") {
  if (entry.name.startsWith(".")) return [];
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    return [{ file, path: prefix + entry.name }];
  }
  const reader = entry.createReader();
  const out = [];
  for (;;) {
    const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
    if (!batch.length) break;
    for (const e of batch) out.push(...(await filesOfEntry(e, `${prefix}${entry.name}/`)));
  }
  return out;
}
