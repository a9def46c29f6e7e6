#!/usr/bin/env python3
"""The plant in the retraining walkthrough: pumps whose readings go to the
gateways' inference endpoints (Open Inference Protocol), and the
maintenance crew that later learns what state each pump was really in.

    plant.py --gateway http://127.0.0.1:8091 --gateway http://127.0.0.1:8092 \\
        --readings 400 [--shifted] [--seed 1] [--label-share 0.5] \\
        (--labels labels.csv | --feedback)

Readings go round-robin to the gateways. For a share of them (chosen at
random) the true state is written to `--labels` as `prediction_id,label`
(for `edgeml collector labels`), or given straight back to the gateway that
predicted (`POST /v2/models/sensor/feedback`). Prints how often the model
was right on the readings sent, per model version. Only numpy and the
standard library.
"""
import argparse
import collections
import csv
import json
import os
import sys
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pump import SENSOR_CLASSES, sensor_readings  # noqa: E402


def post(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read()
        return json.loads(text) if text else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", action="append", required=True, help="a gateway's base URL")
    ap.add_argument("--readings", type=int, default=400)
    ap.add_argument("--shifted", action="store_true", help="after the seasonal/calibration change")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--label-share", type=float, default=0.5, help="share of readings whose truth is learnt")
    out = ap.add_mutually_exclusive_group(required=True)
    out.add_argument("--labels", help="write prediction_id,label here")
    out.add_argument("--feedback", action="store_true", help="give labels to the gateways instead")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    x, state = sensor_readings(rng, args.readings, shift=args.shifted)
    learnt = rng.random(args.readings) < args.label_share
    meta = json.load(urllib.request.urlopen(args.gateway[0] + "/v2/models/sensor", timeout=30))
    name = meta["inputs"][0]["name"]
    right = collections.Counter()
    seen = collections.Counter()
    labels = []
    for i in range(args.readings):
        gw = args.gateway[i % len(args.gateway)]
        answer = post(
            gw + "/v2/models/sensor/infer",
            {"inputs": [{"name": name, "shape": [1, 6], "datatype": "FP32", "data": x[i].tolist()}]},
        )
        version = answer["model_version"]
        top = answer["parameters"]["labels"][0]["label"]
        truth = SENSOR_CLASSES[state[i]]
        seen[version] += 1
        right[version] += top == truth
        if learnt[i]:
            pid = answer["parameters"]["prediction_id"]
            if args.feedback:
                post(gw + "/v2/models/sensor/feedback", {"prediction_id": pid, "label": truth})
            labels.append((pid, truth))
    if args.labels:
        with open(args.labels, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["prediction_id", "label"])
            w.writerows(labels)
    kind = "shifted" if args.shifted else "normal"
    for version in sorted(seen):
        print(f"plant: {seen[version]} {kind} readings to sensor {version}: "
              f"{right[version] / seen[version]:.3f} right")
    print(f"plant: {len(labels)} labels " + (f"in {args.labels}" if args.labels else "given to the gateways"))


if __name__ == "__main__":
    main()
