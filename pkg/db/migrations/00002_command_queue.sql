-- +goose Up

-- vigil-control keeps each user's command queue in command_log:
--   seq          FIFO order within a priority (accepted_at may tie);
--   ack          the first ACK, returned again for a duplicate command id;
--   steps        the sequence's steps (contract.Step list) of the result;
--   trace_parent W3C traceparent of the accepting span, so the executing
--                instance continues the same trace;
--   attempts     how often an executor claimed the command (a background
--                job orphaned by a dead executor is re-run a bounded number
--                of times);
--   published_at when the result reached vigil.result.<user>.<id>
--                (outbox: a finished but unpublished result is published
--                again by the user's executor).
ALTER TABLE command_log
    ADD COLUMN seq          bigserial,
    ADD COLUMN ack          jsonb,
    ADD COLUMN steps        jsonb,
    ADD COLUMN trace_parent text,
    ADD COLUMN attempts     int NOT NULL DEFAULT 0,
    ADD COLUMN published_at timestamptz;

-- The queue of a user: queued commands by priority, then FIFO.
CREATE INDEX command_log_queue_idx ON command_log (user_token, priority DESC, seq)
    WHERE status = 'accepted';

-- Finished results not yet published.
CREATE INDEX command_log_unpublished_idx ON command_log (user_token)
    WHERE finished_at IS NOT NULL AND published_at IS NULL;

-- +goose Down
DROP INDEX command_log_unpublished_idx;
DROP INDEX command_log_queue_idx;
ALTER TABLE command_log
    DROP COLUMN published_at,
    DROP COLUMN attempts,
    DROP COLUMN trace_parent,
    DROP COLUMN steps,
    DROP COLUMN ack,
    DROP COLUMN seq;
