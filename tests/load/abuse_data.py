#!/usr/bin/env python3
"""Abuse cases on the data path, run by hand against a server binary.

    python3 tests/load/abuse_data.py [BINARY] [--case metadata|race|all]

BINARY (or $OMNIBIND_BIN, default target/debug/omnibind) is started on 127.0.0.1 with a
temporary data directory and an admin key, from the repository root (for the bundled model),
and stopped at the end. Only loopback traffic; every loop is bounded in count and time.

Cases:
- metadata: one multipart upload whose default metadata is a 1,000,000-element array (2 MB)
  followed by 32 texts, so each item would receive a copy. Prints the answer and the server's
  resident memory (VmRSS) before, at its peak during the request (VmHWM, reset just before),
  and a few seconds after.
- race: an upload of many texts, during whose embedding the collection is deleted and
  created again under the same name. Prints the upload's answer and whether the new
  collection holds items its index does not know (acknowledged yet never searchable).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

from procmem import free_port, mem, reset_peak

KEY = "abuse-data-admin-key-0123456789"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Server:
    def __init__(self, binary):
        self.dir = tempfile.mkdtemp(prefix="omnibind-abuse-")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update({
            "OMNIBIND__SERVER__LISTEN": f"127.0.0.1:{self.port}",
            "OMNIBIND__SERVER__DATA_DIR": os.path.join(self.dir, "data"),
            "OMNIBIND__AUTH__ADMIN_KEY": KEY,
            "RUST_LOG": "warn",
        })
        self.log = open(os.path.join(self.dir, "server.log"), "wb")
        self.proc = subprocess.Popen([binary, "serve"], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited early; see {self.log.name}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("server not ready after 120 s")

    def request(self, method, path, body=None, content_type="application/json", timeout=300):
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + KEY)
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw = e.read()
            status = e.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw[:200]

    def memory(self):
        """(VmRSS, VmHWM) of the server in MiB."""
        return mem(self.proc.pid)

    def reset_peak(self):
        """Resets VmHWM to the current RSS; False where refused."""
        return reset_peak(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def multipart(fields):
    """Encodes [(name, str value)] as multipart/form-data; returns (body, content type)."""
    boundary = "abuse" + uuid.uuid4().hex
    parts = []
    for name, value in fields:
        parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                     .encode() + value.encode() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def create(srv, name="c"):
    status, body = srv.request("POST", "/v1/collections", {"name": name, "model": "default"})
    assert status == 201, (status, body)


def collection(srv, name="c"):
    status, body = srv.request("GET", f"/v1/collections/{name}")
    assert status == 200, (status, body)
    return body


def settle(srv, seconds=5.0):
    """Current RSS after waiting for the allocator to return memory (bounded)."""
    time.sleep(seconds)
    return srv.memory()[0]


def case_metadata(srv):
    print("== metadata: 2 MB default metadata (1,000,000-element array) x 32 text items")
    create(srv)
    # Warm the model and the upload path once, so the start figure includes them.
    srv.request("POST", "/v1/collections/c/items", {"items": [{"text": "warm-up"}]})
    start = settle(srv, 2.0)
    fields = [("metadata", "{\"a\":[" + "0," * 999_999 + "0]}")]
    fields += [("text", f"item number {i}") for i in range(32)]
    body, ctype = multipart(fields)
    peak_reset = srv.reset_peak()
    t = time.time()
    status, answer = srv.request("POST", "/v1/collections/c/items", body, ctype)
    took = time.time() - t
    rss_now, peak = srv.memory()
    after = settle(srv)
    code = answer.get("error", {}).get("code") if isinstance(answer, dict) else None
    print(f"   body {len(body) / 1e6:.2f} MB -> {status} {code or ''} in {took:.2f} s")
    if isinstance(answer, dict) and "error" in answer:
        print(f"   message: {answer['error']['message'][:160]}")
    print(f"   total items in collection: {collection(srv)['total']}")
    print(f"   RSS start {start:.0f} MB; peak during request {peak:.0f} MB"
          f"{'' if peak_reset else ' (process peak; clear_refs refused)'};"
          f" right after {rss_now:.0f} MB; after 5 s {after:.0f} MB"
          f" ({(after - start) / start * 100:+.1f}% of start)")
    return {"status": status, "code": code, "start_mb": start, "peak_mb": peak, "after_mb": after}


def case_race(srv, tries=6, texts=256):
    print(f"== race: upload of {texts} texts; the collection is deleted and created again "
          "while it embeds")
    create(srv, "cal")
    fields = [("text", f"calibration text {i} " + "word " * 40) for i in range(texts)]
    body, ctype = multipart(fields)
    t = time.time()
    status, _ = srv.request("POST", "/v1/collections/cal/items", body, ctype)
    upload_s = time.time() - t
    assert status == 200, status
    print(f"   one upload takes {upload_s:.2f} s")
    results = []
    for n in range(tries):
        name = f"r{n}"
        create(srv, name)
        tag = f"race {n} "
        fields = [("text", f"{tag}text {i} " + "word " * 40) for i in range(texts)]
        body, ctype = multipart(fields)
        outcome = {}

        def upload():
            t0 = time.time()
            outcome["status"], outcome["body"] = srv.request(
                "POST", f"/v1/collections/{name}/items", body, ctype)
            outcome["took"] = time.time() - t0

        th = threading.Thread(target=upload)
        th.start()
        # Somewhere inside the embedding: between 20% and 60% of an upload's time.
        time.sleep(upload_s * (0.2 + 0.08 * n))
        ds, _ = srv.request("DELETE", f"/v1/collections/{name}")
        create(srv, name)
        th.join(timeout=600)
        info = collection(srv, name)
        total, indexed = info["total"], info["index"]["len"]
        # A search for one of the uploaded texts, should any have been stored.
        ss, sb = srv.request("POST", f"/v1/collections/{name}/search",
                             {"query": f"{tag}text 0 " + "word " * 40, "k": 1})
        found = len(sb.get("hits", [])) if ss == 200 else 0
        code = (outcome["body"].get("error", {}).get("code")
                if isinstance(outcome.get("body"), dict) else None)
        created = (sum(1 for i in outcome["body"].get("items", []) if i["status"] == "created")
                   if outcome.get("status") == 200 else 0)
        lost = total - indexed
        print(f"   try {n}: delete {ds} during the upload; upload -> {outcome.get('status')} "
              f"{code or ''} ({created} acknowledged as created, {outcome.get('took', 0):.2f} s);"
              f" new collection total {total}, index.len {indexed}, search hits {found}"
              f"{'  <- acknowledged but never searchable' if lost else ''}")
        results.append({"status": outcome.get("status"), "code": code, "total": total,
                        "indexed": indexed})
    bad = sum(1 for r in results if r["total"] != r["indexed"])
    print(f"   tries where the new collection holds items its index lacks: {bad} of {tries}")
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary", nargs="?",
                    default=os.environ.get("OMNIBIND_BIN",
                                           os.path.join(ROOT, "target/debug/omnibind")))
    ap.add_argument("--case", choices=["metadata", "race", "all"], default="all")
    args = ap.parse_args()
    print(f"binary: {args.binary}")
    for case in (["metadata", "race"] if args.case == "all" else [args.case]):
        srv = Server(os.path.abspath(args.binary))
        try:
            rss, _ = srv.memory()
            print(f"   (server ready, RSS {rss:.0f} MB)")
            {"metadata": case_metadata, "race": case_race}[case](srv)
        finally:
            srv.stop()


if __name__ == "__main__":
    sys.exit(main())
