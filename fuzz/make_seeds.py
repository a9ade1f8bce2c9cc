"""Writes the fuzz targets' seed corpus into fuzz/seeds/<target>/: small valid inputs of every
accepted format, so the fuzzers start past the format checks. Needs Pillow, NumPy and sox.
The seeds are committed; this script only documents and refreshes them.

    python3 fuzz/make_seeds.py
"""
import io, json, os, struct, subprocess, tempfile, wave, zipfile
import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "imagebind")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def image(fmt, mode="RGB", size=(8, 6), **kw):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (size[1], size[0], len(mode) if mode in ("RGB", "RGBA") else 1), dtype=np.uint8)
    img = Image.fromarray(a.squeeze(), mode if mode in ("RGB", "RGBA") else "L")
    if mode in ("P", "CMYK"):
        img = img.convert(mode)
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def wav(seconds=0.1, rate=16000, channels=1):
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    x = np.repeat(x[:, None], channels, axis=1)
    b = io.BytesIO()
    with wave.open(b, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())
    return b.getvalue()


def sox(data, ext):
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "a.wav"), os.path.join(d, "a." + ext)
        open(src, "wb").write(data)
        subprocess.run(["sox", src, dst], check=True)
        return open(dst, "rb").read()


def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def png16(h, w):
    a = (np.arange(h * w).reshape(h, w) * 300 % 65535).astype(np.uint16)
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def frames_zip(n=3):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        for i in range(n):
            z.writestr(f"frame_{i:03d}.png", image("PNG", size=(8, 6)))
        z.writestr("fps.txt", "10")
    return b.getvalue()


def multipart(fields):
    out = b""
    for name, filename, data in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--B\r\nContent-Disposition: " + disp.encode() + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--B--\r\n"


images = {
    "png_rgb": image("PNG"), "png_rgba": image("PNG", "RGBA"), "png_grey": image("PNG", "L"),
    "png_palette": image("PNG", "P"), "jpeg": image("JPEG", quality=80),
    "jpeg_progressive": image("JPEG", progressive=True), "gif": image("GIF", "P"),
    "jpeg_cmyk": image("JPEG", "CMYK", size=(16, 8)), "jpeg_grey": image("JPEG", "L", size=(16, 8)),
    "jpeg_422": image("JPEG", size=(16, 8), subsampling="4:2:2"),
    "jpeg_444_progressive": image("JPEG", size=(16, 16), subsampling="4:4:4", progressive=True),
    "webp": image("WEBP", lossless=True), "tiff": image("TIFF"),
}
for k, v in images.items():
    put("image", k, v)

audio = {"wav_mono": wav(), "wav_stereo_48k": wav(0.05, 48000, 2)}
audio["flac"] = sox(audio["wav_mono"], "flac")
audio["ogg"] = sox(audio["wav_mono"], "ogg")
audio["mp3"] = open(os.path.join(FIX, "audio", "speech_16k_mono_s16_0.9s.mp3"), "rb").read()
for k, v in audio.items():
    put("audio", k, v)

maps = {"png16": png16(6, 8), "png8": image("PNG", "L"), "npy_f32": npy(np.linspace(0.5, 4, 48, dtype="<f4").reshape(6, 8)),
        "npy_u16": npy(np.arange(48, dtype="<u2").reshape(6, 8))}
for k, v in maps.items():
    put("depth", k, v)
    put("thermal", k, v)

imu = np.sin(np.linspace(0, 20, 6 * 200)).reshape(6, 200).astype("<f4")
put("imu", "npy_6x200", npy(imu))
put("imu", "npy_200x6_f64", npy(imu.T.astype("<f8")))
put("imu", "csv", "\n".join(",".join(f"{v:.3f}" for v in row) for row in imu.T[:50]).encode() + b"\n")
put("imu", "csv_header", b"t,ax,ay,az,gx,gy,gz\n" + b"\n".join(
    (f"{i}," + ",".join(f"{v:.3f}" for v in row)).encode() for i, row in enumerate(imu.T[:50])) + b"\n")

put("video", "frames_zip", frames_zip())

mp = {
    "items_image": (0, [("file", "a.png", images["png_rgb"]), ("metadata", None, b'{"k":1}'), ("id", None, b"x1")]),
    "items_text": (0, [("text", None, b"a red car"), ("modality", None, b"text")]),
    "items_audio": (0, [("file", "a.wav", audio["wav_mono"])]),
    "items_depth": (0, [("file", "d.npy", maps["npy_f32"]), ("modality", None, b"depth")]),
    "items_imu": (0, [("file", "m.npy", npy(np.zeros((6, 2000), "<f4")))]),
    "items_video": (0, [("file", "v.zip", frames_zip())]),
    "search_text": (1, [("text", None, b"a dog"), ("k", None, b"3")]),
    "search_image": (1, [("file", "q.png", images["png_rgb"]), ("filter", None, b'{"modality":"text"}')]),
    "embed_text": (2, [("model", None, b"default"), ("text", None, b"hello")]),
    "embed_image": (2, [("model", None, b"default"), ("file", "e.jpg", images["jpeg"])]),
    "classify": (3, [("model", None, b"default"), ("file", "c.png", images["png_rgb"]), ("labels", None, b'["cat","dog"]')]),
}
for k, (route, fields) in mp.items():
    put("multipart", k, bytes([route]) + multipart(fields))

# index_dump: [mode, file pick, offset lo, offset hi, payload...]; mode bit 0 picks the HNSW
# dump, bits 1-2 the damage (replace, overwrite, cut), bit 3 re-seals the checksums.
for mode in range(16):
    for pick in range(4):
        put("index_dump", f"m{mode:02d}_f{pick}", bytes([mode, pick, 16, 0]) + b"\x00\xff\x7f\x80")

# store_records: [tree pick, key pick, op, value...]; op 0 overwrites, 1 removes, 2 adds.
for tree in range(9):
    for op in range(3):
        put("store_records", f"t{tree}_o{op}", bytes([tree, 1, op]) + b'{"name":"x","dim":3}')
