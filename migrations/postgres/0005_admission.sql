-- Anti-spam admission (AccessService.Admit): one row per user per context,
-- shared by every replica. Times are Unix milliseconds, as everywhere.
CREATE TABLE admission (
    context        TEXT    NOT NULL,
    user_id        TEXT    NOT NULL,
    -- The admitted updates still in the window, oldest first, as
    -- "at,kind,class,fingerprint" entries separated by ';' (class is one
    -- letter: t, c, m or k; fingerprint is 16 hex digits of a digest, or
    -- '-'). Rewritten whole with every update, and short: the window holds
    -- a few dozen updates.
    recent         TEXT    NOT NULL DEFAULT '',
    warnings       INTEGER NOT NULL DEFAULT 0,
    -- Hundredths: 100 is 1.0.
    reputation     INTEGER NOT NULL DEFAULT 100,
    blocked_until  BIGINT,
    -- rate_limit, identical_messages, callback_spam or media_flood.
    block_cause    TEXT,
    updates_total  BIGINT  NOT NULL DEFAULT 0,
    blocks_total   BIGINT  NOT NULL DEFAULT 0,
    warnings_total BIGINT  NOT NULL DEFAULT 0,
    refused_total  BIGINT  NOT NULL DEFAULT 0,
    first_seen     BIGINT,
    last_seen      BIGINT,
    -- The last update of any outcome: a user idle for a day and not
    -- blocked is purged by the cleanup pass.
    touched_at     BIGINT  NOT NULL,
    -- Bumped by every write, for compare-and-set.
    version        BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (context, user_id)
);

-- The top offenders, most blocks first.
CREATE INDEX admission_offenders ON admission (blocks_total DESC, context, user_id);
-- The cleanup pass's range scan.
CREATE INDEX admission_touched ON admission (touched_at);
-- GetSubject finds a user's rows in every context.
CREATE INDEX admission_user ON admission (user_id);

-- Admit's batched read, for the reason authgate_key_states (0004) gives: by
-- primary key from the first call, before the table is ever analyzed.
CREATE FUNCTION authgate_admissions(contexts TEXT[], user_ids TEXT[]) RETURNS SETOF admission
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
BEGIN
    RETURN QUERY
        SELECT a.* FROM admission AS a
        WHERE (a.context, a.user_id) IN (SELECT * FROM unnest(contexts, user_ids));
END
$$;
