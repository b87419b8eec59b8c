-- +goose Up

-- A user of vigil, named in NATS subjects by identity_sub (the user token).
CREATE TABLE users (
    id                bigserial   PRIMARY KEY,
    identity_provider text        NOT NULL,
    identity_sub      text        NOT NULL,
    settings          jsonb       NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (identity_provider, identity_sub)
);

-- Control resolves user tokens (identity_sub alone) to users.
CREATE INDEX users_identity_sub_idx ON users (identity_sub);

-- An exchange account of a user; its id is the <exchange> of subjects and keys.
CREATE TABLE exchange_accounts (
    id         bigserial   PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    exchange   text        NOT NULL,
    label      text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, exchange, label)
);

-- Every command control accepted, recorded before the ACK is sent.
CREATE TABLE command_log (
    id               text        PRIMARY KEY,
    user_token       text        NOT NULL,
    user_id          bigint,
    command          text        NOT NULL,
    payload          jsonb       NOT NULL,
    operator         text        NOT NULL DEFAULT '',
    status           text        NOT NULL
        CHECK (status IN ('accepted', 'running', 'succeeded', 'failed', 'cancelled')),
    priority         int,
    control_instance text,
    result           jsonb,
    error            jsonb,
    trace_id         text,
    accepted_at      timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz
);

CREATE INDEX command_log_user_token_accepted_at_idx ON command_log (user_token, accepted_at);

-- Commands not finished yet, which a control instance resumes or fails after a crash.
CREATE INDEX command_log_unfinished_idx ON command_log (accepted_at)
    WHERE status IN ('accepted', 'running');

-- Alerts that fired; id is the deterministic alert id, so a redelivered
-- evaluation does not record the same alert twice.
CREATE TABLE alert_events (
    id         text        PRIMARY KEY,
    user_id    bigint,
    user_token text,
    rule_id    text,
    symbol     text,
    timeframe  text,
    bar_start  timestamptz,
    payload    jsonb,
    fired_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX alert_events_user_token_fired_at_idx ON alert_events (user_token, fired_at);

-- +goose Down
DROP TABLE alert_events;
DROP TABLE command_log;
DROP TABLE exchange_accounts;
DROP TABLE users;
