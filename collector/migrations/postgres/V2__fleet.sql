-- Fleet: roots, releases, rollout state per channel, device status. `seq`
-- orders a channel's releases by arrival (SQLite uses its rowid).
CREATE TABLE fleet_roots (
    version BIGINT PRIMARY KEY,
    envelope TEXT NOT NULL,
    published_ms BIGINT NOT NULL
);
CREATE TABLE fleet_releases (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    channel TEXT NOT NULL,
    version BIGINT NOT NULL,
    envelope TEXT NOT NULL,
    release TEXT NOT NULL,
    published_ms BIGINT NOT NULL,
    PRIMARY KEY (channel, version)
);
CREATE TABLE fleet_channels (
    channel TEXT PRIMARY KEY,
    model_version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    previous_version TEXT,
    started_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE fleet_status (
    device_id TEXT PRIMARY KEY REFERENCES devices(id),
    report TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
