-- The hot read: the stored states of a batch of keys (every CheckAccess and
-- RecordFailure starts with it). It lives in a function so that the one
-- planner setting it needs applies to it alone.
--
-- Every lookup is by primary key, so the index is right at any table size,
-- but the planner does not know that while key_state is nearly empty: on a
-- fresh deployment, until autovacuum first analyzes the table, it plans a
-- hash join over a sequential scan, and keeps reusing that cached plan as
-- the table grows to hundreds of thousands of rows (measured: 7 times fewer
-- checks per second). With sequential scans off for this statement, the
-- primary key index is used from the first call.
CREATE FUNCTION authgate_key_states(
    contexts TEXT[], rules TEXT[], user_ids TEXT[], ips TEXT[], session_ids TEXT[]
) RETURNS SETOF key_state
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
        SELECT k.* FROM key_state AS k
        WHERE (k.context, k.rule, k.user_id, k.ip, k.session_id) IN
            (SELECT * FROM unnest(contexts, rules, user_ids, ips, session_ids));
END
$$;
