-- A key's third identifier is a session id for a session key and a
-- password fingerprint for a password key (key_state.kind tells which), so
-- the column is named for both: `token`. Audit events name a password key
-- in a column of their own (what admins are shown of it) rather than in the
-- text of their detail.
--
-- A rolling upgrade across this migration: replicas of earlier versions
-- still ask for key_state.session_id and fail their store calls once it has
-- run (answered as in a store outage, by each context's failure_mode),
-- until the new version replaces them.
ALTER TABLE key_state RENAME COLUMN session_id TO token;
ALTER INDEX key_state_session_id RENAME TO key_state_token;

-- Their bodies name the column; their plans and settings are those of 0004
-- and 0006.
DROP FUNCTION authgate_key_states(TEXT[], TEXT[], TEXT[], TEXT[], TEXT[]);
CREATE FUNCTION authgate_key_states(
    contexts TEXT[], rules TEXT[], user_ids TEXT[], ips TEXT[], tokens TEXT[]
) RETURNS SETOF key_state
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
        SELECT k.* FROM key_state AS k
        WHERE (k.context, k.rule, k.user_id, k.ip, k.token) IN
            (SELECT * FROM unnest(contexts, rules, user_ids, ips, tokens));
END
$$;

DROP FUNCTION authgate_stale_requests(INT[], TEXT[], TEXT[], TEXT[], TEXT[], TEXT[], BIGINT[]);
CREATE FUNCTION authgate_stale_requests(
    requests INT[], contexts TEXT[], rules TEXT[], user_ids TEXT[], ips TEXT[],
    tokens TEXT[], versions BIGINT[]
) RETURNS SETOF INT
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
        SELECT DISTINCT u.request
        FROM unnest(requests, contexts, rules, user_ids, ips, tokens, versions)
            AS u(request, context, rule, user_id, ip, token, version)
        LEFT JOIN key_state AS k
            ON k.context = u.context AND k.rule = u.rule AND k.user_id = u.user_id
            AND k.ip = u.ip AND k.token = u.token
        WHERE COALESCE(k.version, 0) <> u.version - 1;
END
$$;

-- The key as admins are shown it (the secret's id, ':' and 4 hex digits),
-- for events about a password key; '' for every other event.
ALTER TABLE security_event ADD COLUMN password TEXT NOT NULL DEFAULT '';
UPDATE security_event SET password = substr(detail, 10), detail = ''
    WHERE kind IN ('lockout', 'permanent_lockout', 'lockout_expired')
      AND user_id = '' AND ip = '' AND session_id = '' AND detail LIKE 'password %';
