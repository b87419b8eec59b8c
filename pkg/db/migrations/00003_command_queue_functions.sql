-- +goose Up

-- vigil-control's two hot queue operations as functions, so each is one
-- round trip (one implicit transaction) instead of a client-driven
-- transaction of about six. Every statement of a plpgsql function takes a
-- fresh snapshot under READ COMMITTED, so the reads after the per-user
-- advisory lock see what the previous holder of the lock committed, exactly
-- as in the client-side transactions they replace.

-- vigil_record_command records a command in the user's queue unless the id
-- is known or the queue is full. outcome is:
--   accepted  the row is inserted; ack is p_ack with its position set to the
--             commands that will run before it (queued at the same or a
--             higher priority, plus the running queued command);
--   known     the id is recorded already: ack is its first ACK, known_user
--             and known_command say whose it is and recent whether it was
--             accepted within p_dedupe_secs;
--   busy      the user has queued commands (queued) at p_queue_limit.
-- +goose StatementBegin
CREATE FUNCTION vigil_record_command(
    p_id text, p_user text, p_user_id bigint, p_command text, p_payload jsonb, p_operator text,
    p_priority int, p_trace_id text, p_trace_parent text, p_ack jsonb,
    p_queue_limit int, p_dedupe_secs double precision)
RETURNS TABLE (outcome text, ack jsonb, queued int, known_user text, known_command text, recent boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_queued  int;
    v_ahead   int;
    v_running int;
    v_ack     jsonb;
    v_rows    int;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('vigil-control/' || p_user, 0));
    RETURN QUERY
        SELECT 'known', c.ack, 0, c.user_token, c.command, c.accepted_at > now() - make_interval(secs => p_dedupe_secs)
        FROM command_log c WHERE c.id = p_id;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT count(*) FILTER (WHERE c.status = 'accepted'),
           count(*) FILTER (WHERE c.status = 'accepted' AND c.priority >= p_priority),
           count(*) FILTER (WHERE c.status = 'running' AND c.command <> 'force-backfill')
    INTO v_queued, v_ahead, v_running
    FROM command_log c
    WHERE c.user_token = p_user AND c.status IN ('accepted', 'running');
    IF v_queued >= p_queue_limit THEN
        RETURN QUERY SELECT 'busy', NULL::jsonb, v_queued, p_user, p_command, true;
        RETURN;
    END IF;
    v_ack := p_ack || jsonb_build_object('position', v_ahead + v_running);
    INSERT INTO command_log (id, user_token, user_id, command, payload, operator, status,
                             priority, trace_id, trace_parent, accepted_at, ack)
    VALUES (p_id, p_user, p_user_id, p_command, p_payload, p_operator, 'accepted',
            p_priority, p_trace_id, p_trace_parent, clock_timestamp(), v_ack)
    ON CONFLICT (id) DO NOTHING;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    IF v_rows = 1 THEN
        RETURN QUERY SELECT 'accepted', v_ack, v_queued + 1, p_user, p_command, true;
        RETURN;
    END IF;
    -- Taken meanwhile by a command of another user (whose lock we do not
    -- hold): answer as for any known id.
    RETURN QUERY
        SELECT 'known', c.ack, 0, c.user_token, c.command, c.accepted_at > now() - make_interval(secs => p_dedupe_secs)
        FROM command_log c WHERE c.id = p_id;
END;
$$;
-- +goose StatementEnd

-- vigil_claim_command takes the next command of p_user's queue for p_self
-- when no running command of the user needs attention. A running row is
-- alive when p_self runs it (its id is in p_self_running) or when its
-- executor is another of the live instances p_members. outcome is:
--   dead     a running row's executor is dead: nothing is changed, the caller
--            settles the orphans in its own transaction;
--   busy     a live executor runs one of the user's queued commands;
--   none     nothing to claim (jobs are claimed only while fewer than
--            p_max_jobs run);
--   claimed  the o_* columns are the claimed row, now running for p_self.
-- +goose StatementBegin
CREATE FUNCTION vigil_claim_command(
    p_user text, p_self text, p_self_running text[], p_members text[], p_max_jobs int)
RETURNS TABLE (outcome text, o_id text, o_user_token text, o_user_id bigint, o_command text,
               o_payload jsonb, o_operator text, o_priority int, o_trace_parent text, o_trace_id text,
               o_status text, o_control_instance text, o_attempts int, o_seq bigint, o_accepted_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_dead  boolean;
    v_busy  boolean;
    v_jobs  int;
    v_id    text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('vigil-control/' || p_user, 0));
    WITH running AS (
        SELECT c.command,
               CASE WHEN coalesce(c.control_instance, '') = p_self THEN c.id = ANY(p_self_running)
                    ELSE coalesce(c.control_instance, '') = ANY(p_members) END AS alive
        FROM command_log c
        WHERE c.user_token = p_user AND c.status = 'running')
    SELECT coalesce(bool_or(NOT r.alive), false),
           coalesce(bool_or(r.alive AND r.command <> 'force-backfill'), false),
           count(*) FILTER (WHERE r.alive AND r.command = 'force-backfill')
    INTO v_dead, v_busy, v_jobs
    FROM running r;
    IF v_dead THEN
        RETURN QUERY SELECT 'dead', NULL, NULL, NULL::bigint, NULL, NULL::jsonb, NULL, NULL::int, NULL, NULL,
                            NULL, NULL, NULL::int, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_busy THEN
        RETURN QUERY SELECT 'busy', NULL, NULL, NULL::bigint, NULL, NULL::jsonb, NULL, NULL::int, NULL, NULL,
                            NULL, NULL, NULL::int, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT c.id INTO v_id
    FROM command_log c
    WHERE c.user_token = p_user AND c.status = 'accepted' AND (v_jobs < p_max_jobs OR c.command <> 'force-backfill')
    ORDER BY c.priority DESC, c.seq LIMIT 1 FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'none', NULL, NULL, NULL::bigint, NULL, NULL::jsonb, NULL, NULL::int, NULL, NULL,
                            NULL, NULL, NULL::int, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    UPDATE command_log c
    SET status = 'running', control_instance = p_self, started_at = clock_timestamp(), attempts = c.attempts + 1
    WHERE c.id = v_id;
    RETURN QUERY
        SELECT 'claimed', c.id, c.user_token, coalesce(c.user_id, 0), c.command, c.payload, c.operator,
               coalesce(c.priority, 0), coalesce(c.trace_parent, ''), coalesce(c.trace_id, ''), c.status,
               coalesce(c.control_instance, ''), c.attempts, c.seq, c.accepted_at
        FROM command_log c WHERE c.id = v_id;
END;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION vigil_claim_command(text, text, text[], text[], int);
DROP FUNCTION vigil_record_command(text, text, bigint, text, jsonb, text, int, text, text, jsonb, int, double precision);
