// What the end-to-end test and the screenshot script share: the real server binary started on a
// temporary data directory with a given model, and headless Chromium.
//
// Environment: OMNIBIND_BIN (default: the debug binary under CARGO_TARGET_DIR or target/),
// CHROMIUM (default /usr/bin/chromium).

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const here = path.dirname(fileURLToPath(import.meta.url));
export const repo = path.resolve(here, "../..");
export const bin = process.env.OMNIBIND_BIN
  || path.join(process.env.CARGO_TARGET_DIR || path.join(repo, "target"), "debug/omnibind");

// Starts `omnibind serve` on a free port with one model (`name`, `modelPath`, optional
// `device`), API keys when `keys` ({ admin, read }) is given, and a data directory in a new
// temporary folder. Resolves, once the server logs that it listens, to { base, tmp, stop }: its
// URL, the temporary folder (free for the caller's files) and a function that stops the server
// and removes the folder.
export function startServer({ tmpPrefix, name, modelPath, device, keys, timeoutMs }) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), tmpPrefix));
  const config = path.join(tmp, "config.toml");
  fs.writeFileSync(config, [
    "[server]",
    'listen = "127.0.0.1:0"',
    `data_dir = ${JSON.stringify(path.join(tmp, "data"))}`,
    "",
    "[[models]]",
    `name = ${JSON.stringify(name)}`,
    `path = ${JSON.stringify(modelPath)}`,
    ...(device ? [`device = ${JSON.stringify(device)}`] : []),
    "",
    ...(keys ? [
      "[auth]",
      `admin_key = ${JSON.stringify(keys.admin)}`,
      ...(keys.read ? [`read_key = ${JSON.stringify(keys.read)}`] : []),
      "",
    ] : []),
  ].join("\n"));
  if (!fs.existsSync(bin)) throw new Error(`no server binary at ${bin}: run cargo build first`);
  const server = spawn(bin, ["serve", "--config", config], {
    env: { ...process.env, RUST_LOG: "warn,omnibind=info", NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stop = async () => {
    if (server.exitCode === null) {
      server.kill("SIGTERM");
      await new Promise((r) => server.once("exit", r));
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  };
  return new Promise((resolve, reject) => {
    let log = "";
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), timeoutMs);
    const onData = (d) => {
      log += d.toString();
      const m = /listening on (http:\/\/[\d.:]+)/.exec(log.replace(/\x1b\[[0-9;]*m/g, ""));
      if (m) {
        clearTimeout(timer);
        resolve({ base: m[1], tmp, stop });
      }
    };
    server.stdout.on("data", onData);
    server.stderr.on("data", onData);
    server.on("exit", (code) => reject(new Error(`server exited (${code}):\n${log}`)));
  });
}

// Headless Chromium (Debian's, or CHROMIUM) with the flags both scripts need, plus `extraArgs`.
export function launchChromium(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ...extraArgs,
    ],
  });
}
