// The REST API of omnibind, as the page uses it. Every call goes through `send`, which adds the
// API key (if the server wants one: it is asked for on the first 401 and kept for the browser
// tab in sessionStorage), and `call` turns the server's error body
// {"error":{"code","message"}} into an ApiError carrying that message.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorOf(resp) {
  let code = `http_${resp.status}`;
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  return new ApiError(resp.status, code, message);
}

const KEY_STORE = "omnibind.apiKey";
let apiKey = sessionStorage.getItem(KEY_STORE) || "";
let askKey = null;

/// `ask(message)` is called when the server answers 401; it resolves to a key to retry with,
/// or null to give up (the call then fails with the server's error).
export function onKeyNeeded(ask) {
  askKey = ask;
}

/// Keeps `key` for this browser tab; an empty key forgets it.
export function setKey(key) {
  apiKey = key || "";
  if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey);
  else sessionStorage.removeItem(KEY_STORE);
}

export const hasKey = () => apiKey !== "";

function withKey(headers = {}) {
  const out = { ...headers };
  if (apiKey) out.Authorization = `Bearer ${apiKey}`;
  return out;
}

/// A 401 answer: asks for a key (when the page can) and says whether to try again.
async function retryWithKey(error, attempt) {
  if (error.status !== 401 || !askKey || attempt >= 3) return false;
  const key = await askKey(error.message);
  if (key === null || key === undefined) return false;
  setKey(key);
  return true;
}

/// fetch with the key, asking for one on 401.
async function send(url, init) {
  for (let attempt = 0; ; attempt++) {
    let resp;
    try {
      resp = await fetch(url, { ...init, headers: withKey(init.headers) });
    } catch (e) {
      throw new ApiError(0, "network", `the server could not be reached (${e.message})`);
    }
    if (resp.status !== 401) return resp;
    const error = await errorOf(resp);
    if (!(await retryWithKey(error, attempt))) throw error;
  }
}

async function call(method, path, body) {
  const init = { method, headers: {} };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const resp = await send(path, init);
  if (!resp.ok) throw await errorOf(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

const seg = encodeURIComponent;
const coll = (name) => `/v1/collections/${seg(name)}`;

export const models = () => call("GET", "/v1/models");
export const collections = () => call("GET", "/v1/collections");
export const collection = (name) => call("GET", coll(name));
export const createCollection = (name, model) =>
  call("POST", "/v1/collections", { name, model });
export const deleteCollection = (name) => call("DELETE", coll(name));
export const items = (name, limit, cursor) =>
  call("GET", `${coll(name)}/items?limit=${limit}${cursor ? `&cursor=${seg(cursor)}` : ""}`);
export const item = (name, id) => call("GET", `${coll(name)}/items/${seg(id)}`);
export const deleteItem = (name, id) => call("DELETE", `${coll(name)}/items/${seg(id)}`);
export const addTexts = (name, texts) => call("POST", `${coll(name)}/items`, { items: texts });
export const search = (name, body) => call("POST", `${coll(name)}/search`, body);
export const searchForm = (name, form) => call("POST", `${coll(name)}/search`, form);
export const embedForm = (form) => call("POST", "/v1/embed", form);
export const classify = (body) => call("POST", "/v1/classify", body);
export const classifyForm = (form) => call("POST", "/v1/classify", form);

/// The original bytes of an item, with their stored type.
export async function content(url) {
  const resp = await send(url, { method: "GET" });
  if (!resp.ok) throw await errorOf(resp);
  const type = (resp.headers.get("Content-Type") || "").split(";")[0].trim();
  return { type, bytes: await resp.arrayBuffer() };
}

/// Uploads one multipart form with progress reports (fetch cannot report upload progress).
export async function upload(name, form, onProgress) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await uploadOnce(name, form, onProgress);
    } catch (error) {
      if (!(await retryWithKey(error, attempt))) throw error;
    }
  }
}

function uploadOnce(name, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${coll(name)}/items`);
    for (const [k, v] of Object.entries(withKey())) xhr.setRequestHeader(k, v);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      const body = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const err = body && body.error;
      reject(
        new ApiError(
          xhr.status,
          (err && err.code) || `http_${xhr.status}`,
          (err && err.message) || `${xhr.status} ${xhr.statusText}`,
        ),
      );
    };
    xhr.onerror = () => reject(new ApiError(0, "network", "the server could not be reached"));
    xhr.send(form);
  });
}
