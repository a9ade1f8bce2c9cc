#!/usr/bin/env python3
"""Connection- and HTTP-layer abuse cases, run by hand against a server binary:

    python3 tests/load/abuse_net.py [BINARY] [CASE ...]     (or OMNIBIND_BIN=BINARY)

Cases: metrics, headers, download, spool (default: all). ABUSE_SETTLE_S (default 3) is how
long to wait after a case before reading the memory "after" it. Each case starts the binary on a
fresh temporary data directory on 127.0.0.1 with an admin and a read key, runs from the
repository root (the bundled model), attacks it with bounded loops, prints the server's
resident memory (VmRSS) before and after and its peak (VmHWM, reset before the attack), and
stops it. Python 3 standard library only; every loop is bounded in count and time.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from procmem import free_port, mem, reset_peak

ADMIN = "abuse-admin-key-0000001"
READ = "abuse-read-key-00000002"
BOUNDARY = "abuse-net-boundary"


def conn_count(pid):
    """Open TCP sockets of the process."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


class Server:
    def __init__(self, binary):
        self.dir = tempfile.mkdtemp(prefix="abuse-net-")
        self.port = free_port()
        env = dict(os.environ)
        env.update({
            "OMNIBIND__AUTH__ADMIN_KEY": ADMIN,
            "OMNIBIND__AUTH__READ_KEY": READ,
            "RUST_LOG": "error",
        })
        self.log = open(os.path.join(self.dir, "server.log"), "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir",
             os.path.join(self.dir, "data")],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.returncode}; see {self.dir}/server.log")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("server not ready in 180 s")

    def request(self, method, path, body=None, key=None, headers=None, timeout=120):
        h = dict(headers or {})
        if key:
            h["Authorization"] = "Bearer " + key
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body,
                                     method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as f:
                return f.status, f.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def mem(self):
        return mem(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def connect(port, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    return s


def is_open(s, wait=0.2):
    """True when the peer has neither closed nor reset the connection."""
    s.settimeout(wait)
    try:
        # An answer the server sent before closing (a 431, say) is read past.
        for _ in range(1000):
            if s.recv(65536) == b"":
                return False
        return True
    except socket.timeout:
        return True
    except OSError:
        return False


def report(name, start, peak, after, extra):
    growth = (after - start) / start * 100
    print(json.dumps({"case": name, "rss_start_mb": round(start, 1), "peak_mb": round(peak, 1),
                      "rss_after_mb": round(after, 1), "after_vs_start_pct": round(growth, 1),
                      **extra}), flush=True)


def case_metrics(srv):
    """5,000 unauthenticated requests with distinct 4 KB methods (answered 401/405), then
    /metrics scraped twice."""
    n, deadline = 5000, time.time() + 300
    sent = 0
    s = connect(srv.port)
    for i in range(n):
        if time.time() > deadline:
            break
        method = f"M{i:05d}" + "Q" * 4090
        req = f"{method} /v1/models HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        try:
            s.sendall(req)
            got = s.recv(65536)
            if not got or b"connection: close" in got.lower():
                s.close()
                s = connect(srv.port)
        except OSError:
            s.close()
            s = connect(srv.port)
        sent += 1
    s.close()
    sizes, times = [], []
    for _ in range(2):
        t = time.time()
        status, body = srv.request("GET", "/metrics", key=READ)
        times.append(round(time.time() - t, 3))
        sizes.append(len(body))
    return {"requests": sent, "metrics_bytes": sizes[-1], "scrape_s": times}


def case_headers(srv):
    """200 connections each sending 380 KB of unfinished headers, plus an idle connection, a
    partial request line and partial headers; which are still open 35 s later (the default
    header timeout is 30 s)."""
    conns, refused = [], 0
    pad = b"X-Pad: " + b"p" * 3800 + b"\r\n"
    deadline = time.time() + 120
    for _ in range(200):
        if time.time() > deadline:
            break
        s = connect(srv.port)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for _ in range(100):  # 380 KB
                s.sendall(pad)
        except OSError:
            refused += 1
        conns.append(s)
    time.sleep(1)
    held_rss = srv.mem()[0]
    idle = connect(srv.port)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    idle.recv(65536)
    line = connect(srv.port)
    line.sendall(b"GET /heal")
    part = connect(srv.port)
    part.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    time.sleep(35)
    open_after = {
        "idle_keep_alive": is_open(idle),
        "partial_request_line": is_open(line),
        "partial_headers": is_open(part),
        "big_headers_still_open": sum(is_open(c, 0.01) for c in conns),
        "server_sockets": conn_count(srv.proc.pid),
    }
    for c in conns + [idle, line, part]:
        c.close()
    return {"connections": len(conns), "send_failed": refused, "rss_while_held_mb": round(held_rss, 1),
            "open_after_35s": open_after}


def multipart_head(path, length, key):
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()


def form_parts(size):
    before = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.txt\"\r\n"
              f"Content-Type: text/plain\r\n\r\n").encode()
    after = f"\r\n--{BOUNDARY}--\r\n".encode()
    return before, size, after


def send_text_file(s, size):
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    chunk = line * ((1 << 20) // len(line) + 1)
    chunk = chunk[: 1 << 20]
    left = size
    while left > 0:
        n = min(left, len(chunk))
        s.sendall(chunk[:n])
        left -= n


def read_answer(s, wait=120):
    s.settimeout(wait)
    got = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except OSError:
        pass
    status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/") else 0
    return status, got


def case_download(srv):
    """A 95 MB original (a text file), fetched by 8 slow clients at once, each reading 64 KB
    a second for 10 s; then the whole file once, and one range."""
    srv.request("POST", "/v1/collections", json.dumps({"name": "c", "model": "default"}).encode(),
                key=ADMIN, headers={"Content-Type": "application/json"})
    size = 95 * 1000 * 1000
    before, _, after = form_parts(size)
    s = connect(srv.port)
    s.sendall(multipart_head("/v1/collections/c/items", len(before) + size + len(after), ADMIN))
    s.sendall(before)
    send_text_file(s, size)
    s.sendall(after)
    status, got = read_answer(s, 600)
    s.close()
    if status != 200:
        raise SystemExit(f"upload failed: {got[:300]!r}")
    item = json.loads(got.split(b"\r\n\r\n", 1)[1])["items"][0]["id"]
    path = f"/v1/collections/c/items/{item}/content"
    time.sleep(2)
    start = srv.mem()[0]
    reset_peak(srv.proc.pid)
    clients = []
    for _ in range(8):
        c = connect(srv.port, rcvbuf=65536)
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {READ}\r\n"
                  f"Connection: close\r\n\r\n".encode())
        clients.append(c)
    got = [0] * 8
    for _ in range(10):
        for i, c in enumerate(clients):
            try:
                c.settimeout(1)
                got[i] += len(c.recv(65536))
            except OSError:
                pass
        time.sleep(1)
    peak_slow = srv.mem()[1]
    for c in clients:
        c.close()
    t = time.time()
    status, body = srv.request("GET", path, key=READ, timeout=300)
    whole = (status, len(body), round(time.time() - t, 2))
    status, body = srv.request("GET", path, key=READ, headers={"Range": "bytes=0-99"})
    time.sleep(2)
    return {"start_override_mb": round(start, 1), "slow_bytes_read": sum(got),
            "peak_during_slow_mb": round(peak_slow, 1), "whole_get": whole,
            "range_get": (status, len(body))}


def case_spool(srv):
    """One client (the admin key) opens 12 uploads of a 100 MB file at once, each sending
    60 MB and holding the rest back for 10 s; meanwhile another client (the read key) embeds a
    small text file. Counts refusals and the spool's peak size on disk."""
    srv.request("POST", "/v1/collections", json.dumps({"name": "s", "model": "default"}).encode(),
                key=ADMIN, headers={"Content-Type": "application/json"})
    other_form = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
                  f"default\r\n"
                  f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
                  f"filename=\"q.txt\"\r\n\r\na small query text\r\n--{BOUNDARY}--\r\n").encode()

    def embed_small():
        return srv.request("POST", "/v1/embed", other_form, key=READ, headers={
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})[0]

    # Warm-up: the other client's request once before the attack, so that the text tower's
    # first use is not counted as growth.
    embed_small()
    time.sleep(1)
    start = srv.mem()[0]
    reset_peak(srv.proc.pid)
    size = 100 * 1000 * 1000
    before, _, after = form_parts(size)
    spool = os.path.join(srv.dir, "data", "spool")
    conns, answers = [], []
    spool_peak = 0

    def spool_bytes():
        total = 0
        for e in os.scandir(spool):
            try:
                total += e.stat().st_size
            except OSError:
                pass
        return total

    def slow_upload():
        s = connect(srv.port)
        conns.append(s)
        try:
            s.sendall(multipart_head("/v1/collections/s/items", len(before) + size + len(after), ADMIN))
            s.sendall(before)
            send_text_file(s, 60 * 1000 * 1000)
        except OSError:
            pass
        s.settimeout(10)
        try:
            got = s.recv(65536)
            answers.append(int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/") else 0)
        except socket.timeout:
            answers.append("held")
        except OSError:
            answers.append("reset")

    threads = [threading.Thread(target=slow_upload) for _ in range(12)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    other = None
    while any(t.is_alive() for t in threads) and time.time() < deadline:
        spool_peak = max(spool_peak, spool_bytes())
        if other is None and spool_peak > 400 * 1000 * 1000:
            other = embed_small()
        time.sleep(0.2)
    for t in threads:
        t.join(30)
    for s in conns:
        s.close()
    time.sleep(2)
    counts = {}
    for a in answers:
        counts[str(a)] = counts.get(str(a), 0) + 1
    return {"start_override_mb": round(start, 1), "uploads": len(threads), "answers": counts, "spool_peak_mb": round(spool_peak / 1e6, 1),
            "other_client_status": other, "spool_after_mb": round(spool_bytes() / 1e6, 1)}


CASES = {"metrics": case_metrics, "headers": case_headers, "download": case_download, "spool": case_spool}


def main():
    args = sys.argv[1:]
    binary = os.environ.get("OMNIBIND_BIN")
    if args and args[0] not in CASES:
        binary = args.pop(0)
    if not binary:
        raise SystemExit(__doc__)
    binary = os.path.abspath(binary)
    for name in args or list(CASES):
        srv = Server(binary)
        try:
            time.sleep(1)
            start = srv.mem()[0]
            reset_peak(srv.proc.pid)
            extra = CASES[name](srv)
            # Seconds to wait before "after" (ABUSE_SETTLE_S): the runtime's idle blocking
            # threads, which spool writes use, exit after 10 s.
            time.sleep(float(os.environ.get("ABUSE_SETTLE_S", "3")))
            after, peak = srv.mem()
            start = extra.pop("start_override_mb", start)
            report(name, start, peak, after, extra)
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
