#!/usr/bin/env python3
"""Retrain the sensor model on labelled drift samples exported by the
fleet server (`edgeml collector export --format parquet`).

    retrain.py export/samples.parquet --version 1.1.0 --out retrained

Trains the same network as models/build_models.py on the original training
readings plus the labelled samples (three quarters of them; the other
quarter is held out), and writes to --out:

- sensor.onnx: the new model (plain ONNX, the scaler folded in);
- reference.npy: the most recent 300 samples, the drift baseline of the
  new version (what its inputs look like now);
- training.npz and heldout.npz: the data it was trained and measured on;
- card.toml: its model card for `edgeml pack --card`, with its accuracy and
  the exported model's on the held-out samples.

Python is only needed here, at training time.
"""
import argparse
import os
import sys

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pump import SENSOR_CLASSES, SENSOR_COLUMNS, save_onnx, train, training_set  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", help="samples.parquet from edgeml collector export")
    ap.add_argument("--version", required=True, help="the new model version (for the card)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--weight", type=int, default=4, help="times each new sample counts")
    ap.add_argument("--revision", help="the training code's revision (default: sha256 of this script)")
    args = ap.parse_args()

    rows = [r for r in pq.read_table(args.samples).to_pylist() if r["model"] == "sensor"]
    rows.sort(key=lambda r: r["at_ms"])
    if not rows:
        sys.exit(f"{args.samples}: no samples of the sensor model")

    def features(r):
        if r["dtype"] != "f32":
            sys.exit(f"sample {r['sample_id']}: dtype {r['dtype']}, expected f32")
        return np.frombuffer(r["data"], dtype="<f4").reshape(-1, len(SENSOR_COLUMNS))[0]

    labelled = [r for r in rows if r["label"] in SENSOR_CLASSES]
    if len(labelled) < 40:
        sys.exit(f"{args.samples}: {len(labelled)} labelled samples; need at least 40")
    x_new = np.stack([features(r) for r in labelled])
    y_new = np.array([SENSOR_CLASSES.index(r["label"]) for r in labelled])
    old_pred = np.array([r["prediction"] or "" for r in labelled])
    held = np.arange(len(labelled)) % 4 == 3
    x_tr0, y_tr0 = training_set()
    x_tr = np.concatenate([x_tr0] + [x_new[~held]] * args.weight)
    y_tr = np.concatenate([y_tr0] + [y_new[~held]] * args.weight)

    clf = train(x_tr, y_tr)
    new_acc = float(clf.score(x_new[held], y_new[held]))
    truth = np.array([SENSOR_CLASSES[i] for i in y_new[held]])
    old_acc = float(np.mean(old_pred[held] == truth))

    if args.revision is None:
        import hashlib
        with open(os.path.abspath(__file__), "rb") as f:
            args.revision = "sha256:" + hashlib.sha256(f.read()).hexdigest()
    os.makedirs(args.out, exist_ok=True)
    save_onnx(clf, os.path.join(args.out, "sensor.onnx"))
    np.save(os.path.join(args.out, "reference.npy"), np.stack([features(r) for r in rows[-300:]]))
    np.savez(os.path.join(args.out, "training.npz"), x=x_tr, y=y_tr)
    np.savez(os.path.join(args.out, "heldout.npz"), x=x_new[held], y=y_new[held])
    n_tr, n_held = int((~held).sum()), int(held.sum())
    with open(os.path.join(args.out, "card.toml"), "w") as f:
        f.write(f'''# Model card for sensor {args.version}, written by models/sensor/retrain.py.
intended_use = "Flagging bearing wear and overheating in motor-driven pumps from six sensor channels"
task = "classification"
limitations = [
    "Trained on simulated readings (models/sensor/pump.py) and {len(labelled)} labelled field samples",
    "Retrain when the plant changes again: the drift report and the accuracy table say when",
]

[owner]
name = "edgeml maintainers"
email = "maintainers@example.invalid"

[training_data]
description = "4000 simulated readings plus {n_tr} labelled drift samples exported from the fleet (each counted {args.weight} times)"
path = "training.npz"

[code]
revision = "{args.revision}"
repository = "https://example.invalid/edgeml"

[[metrics]]
name = "accuracy"
value = {new_acc:.4f}
[metrics.data]
description = "{n_held} labelled drift samples held out (every 4th); the model in the field had {old_acc:.4f} on them"
path = "heldout.npz"
''')
    print(f"retrain: {len(rows)} samples, {len(labelled)} labelled; trained on {n_tr} of them "
          f"(+{len(y_tr0)} original readings)")
    print(f"retrain: accuracy on {n_held} held-out drift samples: {new_acc:.4f} "
          f"(the model in the field: {old_acc:.4f}) -> {args.out}/sensor.onnx")


if __name__ == "__main__":
    main()
