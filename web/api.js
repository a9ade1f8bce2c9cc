// The REST API of omnibind, as the page uses it. Every call goes through `call`, which turns
// the server's error body {"error":{"code","message"}} into an ApiError carrying that message.

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

async function call(method, path, body) {
  const init = { method, headers: {} };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", `the server could not be reached (${e.message})`);
  }
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
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw new ApiError(0, "network", `the server could not be reached (${e.message})`);
  }
  if (!resp.ok) throw await errorOf(resp);
  const type = (resp.headers.get("Content-Type") || "").split(";")[0].trim();
  return { type, bytes: await resp.arrayBuffer() };
}

/// Uploads one multipart form with progress reports (fetch cannot report upload progress).
export function upload(name, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${coll(name)}/items`);
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
