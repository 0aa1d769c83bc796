-- One row per key of one rule in one context: everything the lockout engine
-- needs to judge that key. Times are Unix milliseconds (BIGINT) because the
-- service's clock is an input to every decision; the database's own now() is
-- never consulted, so replicas and tests agree on what "now" means.
-- The embedded default's dialect of migrations/postgres/0001_key_state.sql.
CREATE TABLE key_state (
    context          TEXT    NOT NULL,
    rule             TEXT    NOT NULL,
    -- user, ip, user+ip or session; fixed by the rule, kept so a row can be
    -- read without the configuration that wrote it.
    kind             TEXT    NOT NULL,
    -- The key's identifiers; '' where the kind has no such part (primary key
    -- columns cannot be NULL, and '' is never a valid identifier).
    user_id          TEXT    NOT NULL DEFAULT '',
    ip               TEXT    NOT NULL DEFAULT '',
    session_id       TEXT    NOT NULL DEFAULT '',
    -- Times of the failures that may still count, oldest first,
    -- comma-separated (SQLite has no arrays); at most as many as the rule's
    -- highest threshold.
    recent_failures  TEXT    NOT NULL DEFAULT '',
    failures_total   BIGINT  NOT NULL DEFAULT 0,
    last_failure_at  BIGINT,
    -- The last lock: present when locked_at is set; permanent when
    -- locked_until is then NULL. Kept after it ends, until the row expires.
    locked_at        BIGINT,
    locked_until     BIGINT,
    lock_tier        INTEGER NOT NULL DEFAULT 0,
    -- The current run of lockouts (the n of a progressive ladder).
    recent_lockouts  INTEGER NOT NULL DEFAULT 0,
    last_lockout_at  BIGINT,
    lockouts_total   BIGINT  NOT NULL DEFAULT 0,
    -- When nothing in the row can affect a decision any more; NULL while a
    -- permanent lock holds. The cleanup task deletes rows past it.
    expires_at       BIGINT,
    -- Bumped by every write: a replica that read version n writes only if
    -- the row is still at n (optimistic concurrency, see store/postgres.rs).
    version          BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (context, rule, user_id, ip, session_id)
);

-- AdminUnlock and GetSubject find every row of one subject by any of its
-- identifiers; partial indexes skip the '' placeholders.
CREATE INDEX key_state_user_id ON key_state (user_id) WHERE user_id <> '';
CREATE INDEX key_state_ip ON key_state (ip) WHERE ip <> '';
CREATE INDEX key_state_session_id ON key_state (session_id) WHERE session_id <> '';

-- The cleanup task's range scan.
CREATE INDEX key_state_expires_at ON key_state (expires_at);

-- ListLocked pages through locked rows only, in primary-key order.
CREATE INDEX key_state_locked ON key_state (context, rule, user_id, ip, session_id)
    WHERE locked_at IS NOT NULL;
