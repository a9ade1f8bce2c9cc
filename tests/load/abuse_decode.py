#!/usr/bin/env python3
"""Decode-memory attacks, run by hand: small files that decode to gigabytes.

Usage: tests/load/abuse_decode.py [BINARY]   (or OMNIBIND_BIN=...; default target/debug/omnibind)

For each attack a fresh server is started on 127.0.0.1 with a temporary data directory and the
bundled default model (run from the repository root). The script sends the attack a bounded
number of times and prints, per attack: the answers, the resident memory before (VmRSS), the
peak during the attack (VmHWM, from /proc/PID/status) and the resident memory after. Python
standard library only; every loop is bounded in count and time, and the script stops by itself.

Attacks (every file is built here, nothing is downloaded):
- png:   a 1-bit greyscale PNG of 16384 x 16384 pixels (about 32 KB), to /v1/embed
- webp:  a lossless WebP of 16383 x 16383 pixels (a few dozen bytes: one-symbol prefix codes
         spend no bits per pixel), to /v1/embed
- flac:  a FLAC of 8 channels and 20 minutes of silence (about 450 KB, CONSTANT subframes),
         to /v1/embed
- batch: one upload of four 1-bit PNGs of 16384 x 16384 (decoded in parallel), to a collection
"""

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zlib

from procmem import free_port, mem

REPEAT = 3  # sends of each attack
REQUEST_TIMEOUT_S = 120
START_TIMEOUT_S = 120


def png_1bit(width, height):
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    row = b"\0" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


class Bits:
    """LSB-first bit writer (VP8L)."""

    def __init__(self):
        self.value, self.n = 0, 0

    def put(self, v, bits):
        self.value |= v << self.n
        self.n += bits

    def bytes(self):
        return self.value.to_bytes((self.n + 7) // 8, "little")


def webp_lossless(width, height):
    b = Bits()
    b.put(0x2F, 8)
    b.put(width - 1, 14)
    b.put(height - 1, 14)
    b.put(0, 1)  # alpha unused
    b.put(0, 3)  # version
    b.put(0, 1)  # no transform
    b.put(0, 1)  # no colour cache
    b.put(0, 1)  # no meta prefix codes
    for _ in range(5):  # green, red, blue, alpha, distance: one symbol each, 0 bits per use
        b.put(1, 1)  # simple code
        b.put(0, 1)  # one symbol
        b.put(0, 1)  # 1-bit symbol
        b.put(0, 1)  # symbol 0
    data = b.bytes()
    if len(data) % 2:
        data += b"\0"
    vp8l = b"VP8L" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(vp8l)) + b"WEBP" + vp8l


def crc8(data):
    c = 0
    for byte in data:
        c ^= byte
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


CRC16_TABLE = []
for i in range(256):
    c = i << 8
    for _ in range(8):
        c = ((c << 1) ^ 0x8005) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
    CRC16_TABLE.append(c)


def crc16(data):
    c = 0
    for byte in data:
        c = ((c << 8) & 0xFFFF) ^ CRC16_TABLE[(c >> 8) ^ byte]
    return c


def utf8_number(n):
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | n >> 6, 0x80 | n & 0x3F])
    if n < 0x10000:
        return bytes([0xE0 | n >> 12, 0x80 | n >> 6 & 0x3F, 0x80 | n & 0x3F])
    return bytes([0xF0 | n >> 18, 0x80 | n >> 12 & 0x3F, 0x80 | n >> 6 & 0x3F, 0x80 | n & 0x3F])


def flac_silence(channels, seconds, rate=44100, block=4096):
    frames = seconds * rate // block
    total = frames * block
    info = struct.pack(">HH", block, block) + b"\0" * 6
    info += struct.pack(">Q", (rate << 44) | ((channels - 1) << 41) | (15 << 36) | total)
    info += b"\0" * 16
    out = [b"fLaC", bytes([0x80, 0, 0, len(info)]), info]
    subframes = b"\0\0\0" * channels  # CONSTANT subframes of value 0, 16 bits
    for f in range(frames):
        head = bytes([0xFF, 0xF8, 0xC9, ((channels - 1) << 4) | 0x08]) + utf8_number(f)
        head += bytes([crc8(head)])
        frame = head + subframes
        out.append(frame + struct.pack(">H", crc16(frame)))
    return b"".join(out)


def multipart(fields):
    boundary = uuid.uuid4().hex
    body = b""
    for name, value, filename in fields:
        body += f"--{boundary}\r\n".encode()
        if filename:
            body += (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n").encode()
        else:
            body += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def request(port, method, path, body=None, ctype=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e).encode()


def proc_mem(pid):
    """VmRSS and VmHWM in whole MiB."""
    rss, hwm = mem(pid)
    return {"VmRSS": int(rss), "VmHWM": int(hwm)}


def start(binary, data_dir):
    port = free_port()
    env = dict(os.environ,
               OMNIBIND__SERVER__LISTEN=f"127.0.0.1:{port}",
               OMNIBIND__SERVER__DATA_DIR=data_dir)
    log = open(os.path.join(data_dir, "server.log"), "wb")
    p = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if p.poll() is not None:
            raise SystemExit(f"server exited with {p.returncode}; see {data_dir}/server.log")
        if request(port, "GET", "/readyz")[0] == 200:
            return p, port
        time.sleep(0.2)
    p.kill()
    raise SystemExit("server did not become ready")


def embed(port, data, name):
    body, ctype = multipart([("model", b"default", None), ("file", data, name)])
    return request(port, "POST", "/v1/embed", body, ctype)


def batch(port, files):
    status, _ = request(port, "POST", "/v1/collections",
                        json.dumps({"name": "c", "model": "default"}).encode(), "application/json")
    body, ctype = multipart([("file", d, f"f{i}.png") for i, d in enumerate(files)])
    return request(port, "POST", "/v1/collections/c/items", body, ctype)


def run(binary, name, attack):
    with tempfile.TemporaryDirectory(prefix="omnibind-abuse-") as data_dir:
        p, port = start(binary, data_dir)
        try:
            # Warm up the image and audio towers with one small request each, so that "before"
            # includes their first use.
            embed(port, png_1bit(64, 64), "warm.png")
            embed(port, flac_silence(1, 3), "warm.flac")
            before = proc_mem(p.pid)
            answers = []
            t = time.time()
            for _ in range(REPEAT):
                status, body = attack(port)
                code = ""
                try:
                    code = json.loads(body)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    pass
                answers.append(f"{status}{' ' + code if code else ''}")
            took = time.time() - t
            time.sleep(1)
            after = proc_mem(p.pid)
            alive = request(port, "GET", "/healthz")[0] == 200
        finally:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"{name:6} answers {', '.join(answers):32} RSS before {before['VmRSS']:5} MiB, "
          f"peak {after['VmHWM']:5} MiB (+{after['VmHWM'] - before['VmRSS']}), "
          f"after {after['VmRSS']:5} MiB ({100 * (after['VmRSS'] - before['VmRSS']) / before['VmRSS']:+.0f}%), "
          f"{took:.1f} s, serving: {alive}", flush=True)


def main():
    binary = (sys.argv[1] if len(sys.argv) > 1
              else os.environ.get("OMNIBIND_BIN", "target/debug/omnibind"))
    only = sys.argv[2:] or ["png", "webp", "flac", "batch"]
    png = png_1bit(16384, 16384)
    webp = webp_lossless(16383, 16383)
    flac = flac_silence(8, 20 * 60)
    print(f"binary {binary}; files: png {len(png)} B, webp {len(webp)} B, flac {len(flac)} B",
          flush=True)
    attacks = {
        "png": lambda port: embed(port, png, "bomb.png"),
        "webp": lambda port: embed(port, webp, "bomb.webp"),
        "flac": lambda port: embed(port, flac, "bomb.flac"),
        "batch": lambda port: batch(port, [png] * 4),
    }
    for name in only:
        run(binary, name, attacks[name])


if __name__ == "__main__":
    main()
