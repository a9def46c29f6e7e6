#!/usr/bin/env python3
"""onnxruntime (one thread) on the same models and inputs as benches/models.rs.

Reads a JSON list of {"name", "model", "inputs": {name: npy path}, "iterations"}
on stdin and prints {name: {"p50_us": .., "mean_us": ..}} on stdout.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort

cases = json.load(sys.stdin)
out = {}
for case in cases:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(case["model"], opts, providers=["CPUExecutionProvider"])
    feeds = {k: np.load(v) for k, v in case["inputs"].items()}
    for _ in range(10):
        sess.run(None, feeds)
    times = []
    for _ in range(case["iterations"]):
        t = time.perf_counter_ns()
        sess.run(None, feeds)
        times.append((time.perf_counter_ns() - t) / 1000.0)
    times.sort()
    out[case["name"]] = {"p50_us": times[len(times) // 2], "mean_us": sum(times) / len(times)}
print(json.dumps(out))
