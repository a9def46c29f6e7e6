-- Rollout evidence: which bundles were served to which device, one rollback per
-- device and bundle, the start of each rollout's evidence window, and report
-- sequence numbers.
CREATE TABLE fleet_offers (
    channel TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices(id),
    first_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, sha256, device_id)
);
CREATE TABLE fleet_rollbacks (
    channel TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices(id),
    at_ms INTEGER NOT NULL,
    reason TEXT,
    PRIMARY KEY (channel, sha256, device_id)
);
ALTER TABLE fleet_channels ADD COLUMN evidence_from_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE fleet_status ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
