-- Ground truth. Samples keep the prediction id they came from, so labels
-- uploaded later can be joined with them; outcomes holds one true label per
-- prediction, from a device's feedback endpoint ('device') or a batch
-- upload joined with a stored sample ('batch'). A later label for the same
-- prediction replaces the earlier one (corrections). Windows keep the sum
-- of their top scores, for accuracy estimated from confidence (CBPE).
ALTER TABLE samples ADD COLUMN prediction_id TEXT;
CREATE INDEX samples_by_prediction ON samples (prediction_id);
CREATE TABLE outcomes (
    device_id TEXT NOT NULL,
    prediction_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    predicted_ms INTEGER NOT NULL,
    prediction TEXT,
    score REAL,
    label TEXT NOT NULL,
    labelled_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (device_id, prediction_id)
);
CREATE INDEX outcomes_by_model ON outcomes (name, version, predicted_ms);
ALTER TABLE windows ADD COLUMN confidence_sum REAL NOT NULL DEFAULT 0;
ALTER TABLE windows ADD COLUMN scored INTEGER NOT NULL DEFAULT 0;
