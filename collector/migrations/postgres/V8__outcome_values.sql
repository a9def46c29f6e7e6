-- A regression's first output value next to its true value (as the
-- label), for mean absolute error per model version.
ALTER TABLE outcomes ADD COLUMN value DOUBLE PRECISION;
