"""Synthetic readings of a motor-driven pump: what the sensor model was
trained on, and what the plant simulator (plant.py) feeds the fleet.

Shared by build_models.py, plant.py and retrain.py; only numpy.
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
