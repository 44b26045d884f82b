"""The peer of `camfleet-bench detect`: bare ONNX Runtime from Python (the
onnxruntime wheel whose libonnxruntime.so the collector loads), same model,
same I420 frames, one frame per call.

Two ways, each timed per frame:
  run      session.run on tensors prepared before timing (the runtime alone)
  pipeline I420 -> BGR -> resize -> normalise in NumPy, then session.run
           (what a Python service does per frame; no decoding of the outputs)

    python ort_peer.py MODEL FRAMES.i420 WIDTH HEIGHT COUNT
then one pass per stdin line "<run|pipeline> <threads>", answered with a JSON
list of per-frame seconds (the bench interleaves these passes with its own,
so load from other processes hits both alike).
"""
import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort

MEAN = np.array([103.53, 116.28, 123.675], dtype=np.float32)  # BGR, as the manifest
STD = np.array([57.375, 57.12, 58.395], dtype=np.float32)
SIZE = 416


def preprocess(frame, w, h):
    y = frame[: w * h].reshape(h, w).astype(np.float32)
    u = frame[w * h : w * h + w * h // 4].reshape(h // 2, w // 2).astype(np.float32)
    v = frame[w * h + w * h // 4 :].reshape(h // 2, w // 2).astype(np.float32)
    # Nearest-neighbour resize of each plane to 416x416 (cheaper than bilinear).
    ys = (np.arange(SIZE) * h // SIZE)
    xs = (np.arange(SIZE) * w // SIZE)
    y = y[ys][:, xs]
    u = u[ys // 2][:, xs // 2] - 128.0
    v = v[ys // 2][:, xs // 2] - 128.0
    c = (y - 16.0) * 1.164
    b = c + 2.018 * u
    g = c - 0.813 * v - 0.391 * u
    r = c + 1.596 * v
    bgr = np.clip(np.stack([b, g, r]), 0, 255)
    return ((bgr - MEAN[:, None, None]) / STD[:, None, None])[None].astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("frames")
    ap.add_argument("width", type=int)
    ap.add_argument("height", type=int)
    ap.add_argument("count", type=int)
    a = ap.parse_args()
    raw = np.fromfile(a.frames, dtype=np.uint8)
    size = a.width * a.height * 3 // 2
    frames = [raw[i * size : (i + 1) * size] for i in range(a.count)]
    tensors = [preprocess(f, a.width, a.height) for f in frames]
    sessions = {}
    # One command per line from the bench, which interleaves these passes
    # with its own: "<run|pipeline> <threads>" (0 = ONNX Runtime's default).
    # Answer: one JSON list of per-frame seconds.
    for line in sys.stdin:
        kind, threads = line.split()
        threads = int(threads)
        if threads not in sessions:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name
            sess.run(None, {name: tensors[0]})  # warm-up
            sessions[threads] = (sess, name)
        sess, name = sessions[threads]
        samples = []
        for i, f in enumerate(frames):
            t = time.perf_counter()
            x = tensors[i] if kind == "run" else preprocess(f, a.width, a.height)
            sess.run(None, {name: x})
            samples.append(time.perf_counter() - t)
        print(json.dumps(samples), flush=True)


if __name__ == "__main__":
    main()
