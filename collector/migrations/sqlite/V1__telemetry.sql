-- Devices, idempotent records, models seen, telemetry windows and drift samples.
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    enrolled_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    pending_records INTEGER NOT NULL DEFAULT 0,
    dropped_records INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE records (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(id),
    kind TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE models (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    monitoring_features TEXT NOT NULL,
    labels TEXT NOT NULL,
    baseline TEXT,
    first_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (name, version, digest)
);
CREATE TABLE device_models (
    device_id TEXT NOT NULL REFERENCES devices(id),
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, name, version, digest)
);
CREATE TABLE windows (
    record_id TEXT PRIMARY KEY REFERENCES records(id),
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    count INTEGER NOT NULL,
    errors TEXT NOT NULL,
    latency_us TEXT NOT NULL,
    numeric TEXT NOT NULL,
    categorical TEXT NOT NULL,
    drifted INTEGER NOT NULL,
    recovered INTEGER NOT NULL
);
CREATE INDEX windows_by_model_time ON windows (name, version, start_ms);
CREATE TABLE samples (
    record_id TEXT PRIMARY KEY REFERENCES records(id),
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    prediction TEXT,
    input TEXT NOT NULL
);
CREATE INDEX samples_by_model_time ON samples (name, version, at_ms);
