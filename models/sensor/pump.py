"""Synthetic readings of a motor-driven pump: what the sensor model was
trained on, and what the plant simulator (plant.py) feeds the fleet.

Shared by build_models.py, plant.py and retrain.py; numpy, and for
`train`/`save_onnx` scikit-learn, skl2onnx and onnx.
"""
import numpy as np

SENSOR_COLUMNS = ["temperature_c", "humidity_pct", "vibration_rms", "current_a", "pressure_kpa", "acoustic_db"]
SENSOR_CLASSES = ["normal", "bearing_wear", "overheating"]
SEED = 0


def sensor_readings(rng, n, shift=False):
    """Synthetic readings of a motor-driven pump (6 channels, 3 states).

    `shift=True` is the same machine after a seasonal/calibration change:
    ambient temperature up 9 C, humidity down, vibration sensor gain x1.6.
    """
    state = rng.choice(3, size=n, p=[0.8, 0.12, 0.08])
    temp = rng.normal(45, 4, n) + np.where(state == 2, 18, 0)
    hum = rng.normal(40, 6, n)
    vib = rng.gamma(4, 0.5, n) * np.where(state == 1, 2.5, 1.0)
    current = rng.normal(12, 1.2, n) + 0.08 * (temp - 45) + np.where(state == 1, 1.5, 0)
    pressure = rng.normal(300, 12, n) - np.where(state == 1, 25, 0)
    acoustic = 55 + 4 * np.log1p(vib) + rng.normal(0, 1.5, n)
    if shift:
        temp = temp + 9
        hum = hum - 12
        vib = vib * 1.6
    x = np.stack([temp, hum, vib, current, pressure, acoustic], axis=1).astype(np.float32)
    return x, state


def training_set():
    """The readings sensor.onnx 1.0.0 was trained on (build_models.py)."""
    rng = np.random.default_rng(SEED)
    return sensor_readings(rng, 4000)


def train(x, y):
    """The sensor network (one hidden layer of 32), trained on readings `x`
    with states `y`, with the input scaler folded into its first layer so
    the exported graph is plain ONNX (skl2onnx would emit the ai.onnx.ml
    Scaler op). It takes raw readings. Needs scikit-learn."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=800, random_state=SEED)
    clf.fit(scaler.transform(x), y)
    w = clf.coefs_[0] / scaler.scale_[:, None]
    clf.intercepts_[0] = clf.intercepts_[0] - (scaler.mean_ / scaler.scale_) @ clf.coefs_[0]
    clf.coefs_[0] = w
    return clf


def save_onnx(clf, path):
    """Export a network from `train` as ONNX (opset 15, probabilities
    output, batch dimension `N`). Needs skl2onnx and onnx."""
    import onnx
    from skl2onnx import to_onnx

    example = np.zeros((1, len(SENSOR_COLUMNS)), dtype=np.float32)
    onx = to_onnx(clf, example, options={id(clf): {"zipmap": False}}, target_opset=15)
    for vi in list(onx.graph.input) + list(onx.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if not d.dim_value and not d.dim_param:
                d.dim_param = "N"
    onnx.save(onx, path)
