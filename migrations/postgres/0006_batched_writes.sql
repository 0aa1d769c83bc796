-- The batched compare-and-set write (store/postgres) serves many requests in
-- one statement. Each request names the version it writes to each of its
-- rows: one past the version it read, or 1 for a row it has not seen and
-- guesses is not stored yet. This finds, in the statement's snapshot, the
-- requests whose expectation (the version before, 0 for none) is already
-- wrong, so that the statement writes the others
-- and those alone go back to read and try again, rather than the whole
-- batch failing. (A row that changes after the snapshot still fails the
-- whole statement, through authgate_expect_written.)
--
-- A function for the planner setting it carries, as authgate_key_states
-- (0004): lookups by primary key from the first call.
CREATE FUNCTION authgate_stale_requests(
    requests INT[], contexts TEXT[], rules TEXT[], user_ids TEXT[], ips TEXT[],
    session_ids TEXT[], versions BIGINT[]
) RETURNS SETOF INT
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
        SELECT DISTINCT u.request
        FROM unnest(requests, contexts, rules, user_ids, ips, session_ids, versions)
            AS u(request, context, rule, user_id, ip, session_id, version)
        LEFT JOIN key_state AS k
            ON k.context = u.context AND k.rule = u.rule AND k.user_id = u.user_id
            AND k.ip = u.ip AND k.session_id = u.session_id
        WHERE COALESCE(k.version, 0) <> u.version - 1;
END
$$;

-- Each of these runs once per batch, with arrays whose contents say nothing
-- the plan depends on. Left to choose, plpgsql planned every call afresh
-- (about 80 µs each, a third of a batched write's time in Postgres, and
-- more than the lookup itself); the generic plan, by primary key, is
-- planned once per connection.
ALTER FUNCTION authgate_stale_requests(INT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], BIGINT[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION authgate_key_states(TEXT[], TEXT[], TEXT[], TEXT[], TEXT[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION authgate_admissions(TEXT[], TEXT[])
    SET plan_cache_mode = force_generic_plan;
