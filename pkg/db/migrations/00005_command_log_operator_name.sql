-- +goose Up

-- command_log.operator is the identity the NATS server authenticated for a
-- command (docs/security.md); operator_name is the display name the client
-- chose (the Vigil-Operator header, vigilctl --operator), kept apart and
-- never trusted.
ALTER TABLE command_log ADD COLUMN operator_name text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE command_log DROP COLUMN operator_name;
