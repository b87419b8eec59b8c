-- +goose Up

-- A deleted tenant (vigilctl tenant delete): its users row is gone, its
-- audit rows stay (marked deleted_at) unless the deletion purged them.
-- Kept so that deleting again is recognised (and sweeps again) and the
-- user id of the Redis keys is still known.
CREATE TABLE tenant_deletions (
    user_token   text        NOT NULL,
    user_id      bigint      NOT NULL,
    deleted_at   timestamptz NOT NULL DEFAULT now(),
    audit_purged boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (user_token, user_id)
);

-- The audit rows of a deleted tenant, kept for the audit (docs/security.md).
ALTER TABLE command_log ADD COLUMN deleted_at timestamptz;
ALTER TABLE alert_events ADD COLUMN deleted_at timestamptz;

-- +goose Down
ALTER TABLE alert_events DROP COLUMN deleted_at;
ALTER TABLE command_log DROP COLUMN deleted_at;
DROP TABLE tenant_deletions;
