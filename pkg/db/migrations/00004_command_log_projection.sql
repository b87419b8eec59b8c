-- +goose Up

-- command_log is the audit projection of the commands recorded in JetStream
-- (vigil-control's projector upserts it from the stream VIGIL_COMMANDS);
-- the queue itself lives in the KV bucket VIGIL_QUEUE. Command ids are
-- scoped per user, so the key is (user_token, id).
DROP FUNCTION vigil_claim_command(text, text, text[], text[], int);
DROP FUNCTION vigil_record_command(text, text, bigint, text, jsonb, text, int, text, text, jsonb, int, double precision);
DROP INDEX command_log_queue_idx;
DROP INDEX command_log_unpublished_idx;
ALTER TABLE command_log DROP CONSTRAINT command_log_pkey;
ALTER TABLE command_log ADD PRIMARY KEY (user_token, id);
-- seq is the command's number within its user's queue (given by control).
ALTER TABLE command_log ALTER COLUMN seq DROP DEFAULT;
DROP SEQUENCE IF EXISTS command_log_seq_seq;

-- +goose Down
CREATE SEQUENCE command_log_seq_seq OWNED BY command_log.seq;
SELECT setval('command_log_seq_seq', coalesce(max(seq), 0) + 1, false) FROM command_log;
ALTER TABLE command_log ALTER COLUMN seq SET DEFAULT nextval('command_log_seq_seq');
ALTER TABLE command_log DROP CONSTRAINT command_log_pkey;
ALTER TABLE command_log ADD PRIMARY KEY (id);
CREATE INDEX command_log_queue_idx ON command_log (user_token, priority DESC, seq)
    WHERE status = 'accepted';
CREATE INDEX command_log_unpublished_idx ON command_log (user_token)
    WHERE finished_at IS NOT NULL AND published_at IS NULL;
