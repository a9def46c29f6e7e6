-- Paced rollouts: the schedule step each channel's rollout is at, and
-- the step a decision moved it to.
ALTER TABLE fleet_channels ADD COLUMN step BIGINT NOT NULL DEFAULT 0;
ALTER TABLE fleet_channels ADD COLUMN step_started_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE fleet_decisions ADD COLUMN step BIGINT;
-- A regression's first output value with its sample, for errors from
-- labels uploaded later.
ALTER TABLE samples ADD COLUMN value DOUBLE PRECISION;
-- Tags an admin set on a device (JSON object), in place of the device's own.
CREATE TABLE device_tags (
    device_id TEXT PRIMARY KEY REFERENCES devices(id),
    tags TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
