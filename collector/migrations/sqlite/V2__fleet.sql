-- Fleet: roots, releases, rollout state per channel, device status.
CREATE TABLE fleet_roots (
    version INTEGER PRIMARY KEY,
    envelope TEXT NOT NULL,
    published_ms INTEGER NOT NULL
);
CREATE TABLE fleet_releases (
    channel TEXT NOT NULL,
    version INTEGER NOT NULL,
    envelope TEXT NOT NULL,
    release TEXT NOT NULL,
    published_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, version)
);
CREATE TABLE fleet_channels (
    channel TEXT PRIMARY KEY,
    model_version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    previous_version TEXT,
    started_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE fleet_status (
    device_id TEXT PRIMARY KEY REFERENCES devices(id),
    report TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
