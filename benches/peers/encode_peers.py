"""PyTorch (Hugging Face transformers) on the CLIP ViT-B/32 checkpoint that
`omnibind bench encode` wrote, on the same inputs, threads and batch sizes; then the comparison
table with omnibind's results.

    encode_peers.py OUT_DIR [--markdown FILE] [--machine TEXT] [--command TEXT]

Reads OUT_DIR/clip-b32/ (checkpoint, inputs.json, pixels.npy) and
OUT_DIR/results/encode-omnibind.json; writes OUT_DIR/results/encode-pytorch.json and, with
--markdown, the tables of BENCHMARKS.md. First checks that both run the same model: the
embeddings of the replayed texts and images must agree (cosine >= 0.999 for every input).
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from transformers import CLIPModel


def time_per_call(seconds, f):
    f()
    calls = 0
    t = time.perf_counter()
    while calls < 3 or time.perf_counter() - t < seconds:
        f()
        calls += 1
    return (time.perf_counter() - t) / calls


def padded(rows, pad_id):
    n = max(len(r) for r in rows)
    return torch.tensor([r + [pad_id] * (n - len(r)) for r in rows], dtype=torch.long)


def normalised(x):
    return torch.nn.functional.normalize(x, dim=-1)


def min_cosine(a, b):
    a = normalised(torch.as_tensor(np.asarray(a, dtype=np.float32)))
    b = normalised(b.float())
    return float((a * b).sum(-1).min())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--markdown")
    ap.add_argument("--machine", default="")
    ap.add_argument("--command", default="")
    args = ap.parse_args()
    ours = json.load(open(os.path.join(args.out, "results", "encode-omnibind.json")))
    threads, batches, seconds = ours["threads"], ours["batches"], ours["seconds"]
    torch.set_num_threads(threads)
    ckpt = os.path.join(args.out, "clip-b32")
    model = CLIPModel.from_pretrained(ckpt, torch_dtype=torch.float32).eval()
    inputs = json.load(open(os.path.join(ckpt, "inputs.json")))
    pixels = torch.from_numpy(np.load(os.path.join(ckpt, "pixels.npy"))).reshape(
        -1, *inputs["image_shape"]
    )
    ids = inputs["text_ids"]
    pad = inputs["pad_id"]

    with torch.inference_mode():
        def text_features(rows):
            out = model.get_text_features(input_ids=padded(rows, pad))
            return getattr(out, "pooler_output", out)

        def image_features(px):
            out = model.get_image_features(pixel_values=px)
            return getattr(out, "pooler_output", out)

        agree = {
            "text": min_cosine(inputs["text_embeddings"], text_features(ids)),
            "image": min_cosine(inputs["image_embeddings"], image_features(pixels)),
        }
        print(f"same model check, least cosine omnibind vs PyTorch: {agree}")
        if min(agree.values()) < 0.999:
            raise SystemExit("omnibind and PyTorch disagree: not the same model")
        result = {"threads": threads, "torch": torch.__version__, "agreement": agree,
                  "items_per_s": {"text": {}, "image": {}}}
        for b in batches:
            rows = [ids[i % len(ids)] for i in range(b)]
            s = time_per_call(seconds, lambda: text_features(rows))
            result["items_per_s"]["text"][str(b)] = b / s
            px = pixels[[i % len(pixels) for i in range(b)]]
            s = time_per_call(seconds, lambda: image_features(px))
            result["items_per_s"]["image"][str(b)] = b / s
            print(f"PyTorch batch {b:>3}: text {result['items_per_s']['text'][str(b)]:.1f}/s, "
                  f"image {result['items_per_s']['image'][str(b)]:.1f}/s")
    json.dump(result, open(os.path.join(args.out, "results", "encode-pytorch.json"), "w"),
              indent=2)

    lines = []
    if args.machine or args.command:
        lines += [f"Machine: {args.machine}. Command: `{args.command}`. "
                  f"{threads} threads for both; PyTorch {torch.__version__}.", ""]
    lines += ["CLIP ViT-B/32 (random weights, float32), forward pass only, items/s:", "",
              "| modality | batch | omnibind (candle) | PyTorch | omnibind / PyTorch |",
              "|---|---:|---:|---:|---:|"]
    clip = {r["modality"]: r for r in ours["models"]["clip-b32"]["modalities"]}
    ratios = {}
    for m in ["image", "text"]:
        for b in batches:
            o = clip[m]["items_per_s"][str(b)]
            p = result["items_per_s"][m][str(b)]
            ratios[(m, b)] = o / p
            lines.append(f"| {m} | {b} | {o:,.1f} | {p:,.1f} | {o / p:.2f} |")
    lines += ["", "Preprocessing per item, one thread (omnibind): "
              + ", ".join(f"{m} {clip[m]['preprocess_ms_per_item']:.3f} ms" for m in ["image", "text"]),
              ""]
    lines += ["Bundled default model (omnibind only), items/s:", "",
              "| modality | preprocessing, ms/item | " + " | ".join(f"batch {b}" for b in batches) + " |",
              "|---|---:|" + "---:|" * len(batches)]
    for r in ours["models"].get("default", {}).get("modalities", []):
        cells = " | ".join(f"{r['items_per_s'][str(b)]:,.1f}" for b in batches)
        lines.append(f"| {r['modality']} | {r['preprocess_ms_per_item']:.3f} | {cells} |")
    last = max(batches)
    lines += ["", f"encode_ratio_vs_pytorch_image@{last}: {ratios[('image', last)]:.2f}",
              f"encode_ratio_vs_pytorch_text@{last}: {ratios[('text', last)]:.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        open(args.markdown, "w").write(text)


if __name__ == "__main__":
    main()
