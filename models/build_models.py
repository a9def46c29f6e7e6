#!/usr/bin/env python3
"""Reproduce every model, reference output and test input under models/.

Python is only used here, offline, to produce artefacts that are committed.
Nothing at run time needs Python.

    pip install numpy scikit-learn skl2onnx onnx onnxruntime pillow
    pip install --no-deps silero-vad      # only for its bundled ONNX file
    python3 models/build_models.py        # also needs espeak-ng for the speech WAV

Reference outputs are computed once with onnxruntime (one thread) and
compared by the Rust end-to-end tests with |a-b| <= 1e-4 + 1e-3*|b|.
"""
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import wave

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- sensor
# The pump's simulated readings live next to the model, shared with the
# retraining walkthrough's plant simulator and retraining script.
sys.path.insert(0, os.path.join(HERE, "sensor"))
from pump import SENSOR_CLASSES, SENSOR_COLUMNS, save_onnx, sensor_readings, train  # noqa: E402


def build_sensor():
    out = os.path.join(HERE, "sensor")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    x_tr, y_tr = sensor_readings(rng, 4000)
    x_te, y_te = sensor_readings(rng, 1000)
    clf = train(x_tr, y_tr)
    print("sensor: held-out accuracy = %.4f" % clf.score(x_te, y_te))
    path = os.path.join(out, "sensor.onnx")
    save_onnx(clf, path)
    # reference (what the model was trained on), live data from the same
    # machine, and live data after the shift; all float32 [N, 6]
    np.save(os.path.join(out, "reference.npy"), x_tr[:1000])
    np.save(os.path.join(out, "live.npy"), sensor_readings(rng, 600)[0])
    np.save(os.path.join(out, "shifted.npy"), sensor_readings(rng, 600, shift=True)[0])
    sess = session(path)
    in_name = sess.get_inputs()[0].name
    label, probs = sess.run(None, {in_name: x_te[:16]})
    np.save(os.path.join(out, "ref_input.npy"), x_te[:16])
    np.save(os.path.join(out, "ref_probabilities.npy"), probs.astype(np.float32))
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("\n".join(SENSOR_CLASSES) + "\n")
    with open(os.path.join(out, "preprocess.json"), "w") as f:
        json.dump({"scores_output": "probabilities", "top_k": 3, "columns": SENSOR_COLUMNS}, f, indent=2)
    print("sensor: input name", in_name, "->", path, os.path.getsize(path), "bytes")


# ---------------------------------------------------------------- digits
def build_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from skl2onnx import to_onnx
    from PIL import Image

    out = os.path.join(HERE, "digits")
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    x_tr, x_te, y_tr, y_te, img_tr, img_te = train_test_split(
        x, y, digits.images, test_size=0.2, random_state=SEED, stratify=y
    )
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=SEED)
    clf.fit(x_tr, y_tr)
    print("digits: held-out accuracy (sklearn, float input) = %.4f" % clf.score(x_te, y_te))
    onx = to_onnx(
        clf,
        x_tr[:1],
        options={id(clf): {"zipmap": False}},
        target_opset=15,
        initial_types=None,
    )
    # name the unknown batch dimension so the IO schema reads [N, 64]
    for vi in list(onx.graph.input) + list(onx.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if not d.dim_value and not d.dim_param:
                d.dim_param = "N"
    path = os.path.join(out, "digits.onnx")
    onnx.save(onx, path)

    # held-out digits as 8x8 grayscale PNGs: pixel = round(v / 16 * 255)
    holdout = os.path.join(out, "holdout")
    shutil.rmtree(holdout, ignore_errors=True)
    os.makedirs(holdout)
    labels = {}
    for i, (img, label) in enumerate(zip(img_te, y_te)):
        name = "%03d.png" % i
        px = np.round(img / 16.0 * 255.0).astype(np.uint8)
        Image.fromarray(px, mode="L").save(os.path.join(holdout, name), optimize=True)
        labels[name] = int(label)
    with open(os.path.join(holdout, "labels.json"), "w") as f:
        json.dump(labels, f, indent=0, sort_keys=True)

    # a few held-out digits as 64x64 RGB JPEGs: exercise the JPEG decoder,
    # the colour conversion and the resize to 8x8 inside the component
    jpeg = os.path.join(out, "jpeg")
    shutil.rmtree(jpeg, ignore_errors=True)
    os.makedirs(jpeg)
    jpeg_labels = {}
    for i in range(10):
        px = np.round(img_te[i] / 16.0 * 255.0).astype(np.uint8)
        big = Image.fromarray(px, mode="L").resize((64, 64), Image.BILINEAR).convert("RGB")
        name = "%03d.jpg" % i
        big.save(os.path.join(jpeg, name), quality=95)
        jpeg_labels[name] = int(y_te[i])
    with open(os.path.join(jpeg, "labels.json"), "w") as f:
        json.dump(jpeg_labels, f, indent=0, sort_keys=True)

    # tensor-path reference: the first 16 held-out rows through onnxruntime
    sess = session(path)
    in_name = sess.get_inputs()[0].name
    batch = x_te[:16]
    label, probs = sess.run(None, {in_name: batch})
    np.save(os.path.join(out, "ref_input.npy"), batch)
    np.save(os.path.join(out, "ref_probabilities.npy"), probs.astype(np.float32))
    np.save(os.path.join(out, "ref_label.npy"), label.astype(np.int64))
    # reference data for the drift baseline: 500 training rows
    np.save(os.path.join(out, "reference.npy"), x_tr[:500])
    # live data from the same distribution: the 360 held-out rows
    np.save(os.path.join(out, "live.npy"), x_te)
    with open(os.path.join(out, "labels.txt"), "w") as f:
        f.write("\n".join(str(d) for d in range(10)) + "\n")
    with open(os.path.join(out, "preprocess.json"), "w") as f:
        json.dump(
            {
                "width": 8,
                "height": 8,
                "color": "gray",
                "layout": "flat",
                "scale": 1.0 / 255.0,
                "mean": [0.0],
                "std": [1.0],
                "scores_output": "probabilities",
                "top_k": 3,
            },
            f,
            indent=2,
        )
    print("digits: input name", in_name, "->", path, os.path.getsize(path), "bytes")


# ---------------------------------------------------------------- silero vad
def inline_if(model, sr=16000):
    """Replace the top-level `If(sr == 16000)` by its 16 kHz branch and drop `sr`.

    tract resolves If only on constant conditions; the 16 kHz branch is the
    whole network for 16 kHz audio, so the result is numerically identical.
    """
    g = model.graph
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    if_node = next(n for n in g.node if n.op_type == "If")
    eq = next(n for n in g.node if n.output[0] == if_node.input[0])
    cmp_value = [consts[i] for i in eq.input if i in consts]
    then_is_16k = bool(cmp_value and int(np.array(cmp_value[0]).reshape(-1)[0]) == sr)
    branch = next(
        a.g for a in if_node.attribute if a.name == ("then_branch" if then_is_16k else "else_branch")
    )
    nodes = list(branch.node)
    # rename branch outputs to the If outputs
    rename = {bo.name: io_ for bo, io_ in zip(branch.output, if_node.output)}
    for n in nodes:
        for k, o in enumerate(n.output):
            if o in rename:
                n.output[k] = rename[o]
    used = {i for n in nodes for i in n.input}
    inits = [i for i in list(g.initializer) + list(branch.initializer) if i.name in used]
    new_graph = helper.make_graph(
        nodes,
        "silero_vad_16k",
        [i for i in g.input if i.name != "sr"],
        list(g.output),
        initializer=inits,
    )
    new = helper.make_model(new_graph, opset_imports=model.opset_import, producer_name="edgeml")
    new.ir_version = model.ir_version
    onnx.checker.check_model(new)
    return new


def speech_wav(path):
    """0.8 s silence, espeak-ng speech, 1.0 s silence, speech, 0.6 s silence; 16 kHz mono."""
    def espeak(text):
        raw = subprocess.run(
            ["espeak-ng", "-v", "en", "-s", "150", "--stdout", text], check=True, capture_output=True
        ).stdout
        with wave.open(io.BytesIO(raw)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32)
        # resample to 16 kHz (linear interpolation is enough for a test signal)
        # trim espeak's leading and trailing silence so the segment bounds are the speech
        voiced = np.nonzero(np.abs(pcm) > 300)[0]
        pcm = pcm[voiced[0] : voiced[-1] + 1]
        n = int(len(pcm) * 16000 / rate)
        t = np.linspace(0, len(pcm) - 1, n)
        return np.interp(t, np.arange(len(pcm)), pcm)

    rng = np.random.default_rng(SEED)
    sil = lambda s: rng.normal(0, 30, int(16000 * s))  # faint noise floor, not digital zero
    a, b = espeak("the quick brown fox jumps over the lazy dog"), espeak("edge devices run signed models")
    parts = [sil(0.8), a, sil(1.0), b, sil(0.6)]
    segments, t = [], 0
    for k, p in enumerate(parts):
        if k % 2 == 1:
            segments.append([t / 16000.0, (t + len(p)) / 16000.0])
        t += len(p)
    pcm = np.clip(np.concatenate(parts), -32768, 32767).astype(np.int16)
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return pcm, segments


def build_vad():
    import silero_vad

    out = os.path.join(HERE, "vad")
    src = os.path.join(os.path.dirname(silero_vad.__file__), "data", "silero_vad_op18_ifless.onnx")
    model = inline_if(onnx.load(src))
    path = os.path.join(out, "silero_vad_16k.onnx")
    onnx.save(model, path)

    pcm, segments = speech_wav(os.path.join(out, "speech.wav"))
    # Reference: the same framing the guest uses (512 new samples + 64 context),
    # recurrent state carried across frames, through onnxruntime.
    sess = session(path)
    audio = pcm.astype(np.float32) / 32768.0
    frame, context = 512, 64
    state = np.zeros((2, 1, 128), dtype=np.float32)
    ctx = np.zeros(context, dtype=np.float32)
    probs = []
    first_input = None
    for start in range(0, len(audio) - frame + 1, frame):
        chunk = audio[start : start + frame]
        x = np.concatenate([ctx, chunk])[None, :].astype(np.float32)
        if first_input is None:
            first_input = x
            first_state = state.copy()
        p, state = sess.run(None, {"input": x, "state": state})
        probs.append(float(p[0, 0]))
        ctx = chunk[-context:]
    probs = np.array(probs, dtype=np.float32)
    np.save(os.path.join(out, "ref_probs.npy"), probs)
    # one-frame tensor-path reference
    p, s = sess.run(None, {"input": first_input, "state": first_state})
    np.save(os.path.join(out, "ref_frame_input.npy"), first_input)
    np.save(os.path.join(out, "ref_frame_state.npy"), first_state)
    np.save(os.path.join(out, "ref_frame_output.npy"), p.astype(np.float32))
    np.save(os.path.join(out, "ref_frame_stateN.npy"), s.astype(np.float32))
    with open(os.path.join(out, "speech_segments.json"), "w") as f:
        json.dump({"speech_seconds": segments}, f, indent=2)
    with open(os.path.join(out, "preprocess.json"), "w") as f:
        json.dump(
            {
                "sample_rate": 16000,
                "frame_samples": frame,
                "context_samples": context,
                "input": "input",
                "state_input": "state",
                "output": "output",
                "state_output": "stateN",
                "state_shape": [2, 1, 128],
                "threshold": 0.5,
                "min_speech_ms": 250,
                "min_silence_ms": 100,
            },
            f,
            indent=2,
        )
    print("vad: frames", len(probs), "speech frames", int((probs > 0.5).sum()), "segments", segments)


# ---------------------------------------------------------------- squeezenet
def build_squeezenet():
    out = os.path.join(HERE, "squeezenet")
    src = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_squeezenet.onnx")
    path = os.path.join(out, "squeezenet.onnx")
    shutil.copyfile(src, path)
    sess = session(path)
    rng = np.random.default_rng(SEED)
    x = rng.random((1, 3, 224, 224), dtype=np.float32)
    (y,) = sess.run(None, {"data_0": x})
    np.save(os.path.join(out, "ref_input.npy"), x)
    np.save(os.path.join(out, "ref_output.npy"), y.astype(np.float32))
    print("squeezenet:", path, os.path.getsize(path), "bytes; output", y.shape)


# ---------------------------------------------------------------- trivial (per-call overhead)
def build_trivial():
    out = os.path.join(HERE, "trivial")
    os.makedirs(out, exist_ok=True)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    one = onnx.numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), "one")
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "trivial", [x], [y], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgeml")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out, "add.onnx"))
    np.save(os.path.join(out, "input.npy"), np.arange(4, dtype=np.float32).reshape(1, 4))
    print("trivial: y = x + 1")


# ---------------------------------------------------------------- large (cached-load benchmark; not committed)
def build_large(path):
    """A ~20 MB model (two 1600x1600 dense layers, random weights) for the cached-load benchmark."""
    rng = np.random.default_rng(SEED)
    n = 1600
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, n])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n])
    w1 = onnx.numpy_helper.from_array((rng.standard_normal((n, n)) / n).astype(np.float32), "w1")
    w2 = onnx.numpy_helper.from_array((rng.standard_normal((n, n)) / n).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "large", [x], [y], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgeml")
    model.ir_version = 8
    onnx.save(model, path)
    print("large:", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    if sys.argv[1:2] == ["large"]:
        build_large(sys.argv[2])
        sys.exit(0)
    which = sys.argv[1:] or ["digits", "vad", "squeezenet", "trivial", "sensor"]
    for w in which:
        globals()["build_" + w]()
