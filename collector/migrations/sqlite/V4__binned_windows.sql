-- Windows carry counts on the baseline's quantile grid for the features a
-- baseline covers.
ALTER TABLE windows ADD COLUMN binned TEXT NOT NULL DEFAULT '{}';
