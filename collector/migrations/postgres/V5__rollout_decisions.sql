-- Rollout decisions (halts by the canary gate or by rollback evidence,
-- operators' pauses and resumes): one row per change of a rollout's state,
-- written in the transaction that made the change, naming the replica.
CREATE TABLE fleet_decisions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel TEXT NOT NULL,
    model_version TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    source TEXT NOT NULL,
    reason TEXT,
    replica TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX fleet_decisions_by_channel ON fleet_decisions (channel, id);
