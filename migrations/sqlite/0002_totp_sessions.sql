-- The embedded default's dialect of postgres/0002_totp_sessions.sql.
-- Two-factor sign-in: one TOTP secret and one session per user, and the
-- security events the alerting side delivers.

-- The secret is AES-256-GCM ciphertext under a key that lives outside the
-- database (config, environment or a mounted file); key_id names it so
-- keys can rotate. The user id is the AEAD's associated data, so a
-- ciphertext moved to another row does not decrypt.
-- A user has at most two rows: the confirmed secret in use, and a pending
-- one from an enrollment not yet proven. Until the pending secret's first
-- valid code, the confirmed one keeps working: an abandoned enrollment (or
-- replacement) never locks anyone out.
CREATE TABLE totp_secret (
    user_id     TEXT    NOT NULL,
    pending     BOOLEAN NOT NULL,
    key_id      TEXT    NOT NULL,
    nonce       BLOB    NOT NULL,
    ciphertext  BLOB    NOT NULL,
    -- How this user's codes are made, fixed at enrollment so changing the
    -- defaults later breaks nobody.
    algorithm   TEXT    NOT NULL,
    digits      INTEGER NOT NULL,
    period      INTEGER NOT NULL,
    created_at  BIGINT  NOT NULL,
    -- The last time step accepted: a code of this step or an earlier one is
    -- a replay, on every replica.
    last_step   BIGINT,
    PRIMARY KEY (user_id, pending)
);

-- pyTMBot's session states (BLOCKED is the user's TOTP counter being
-- locked, kept in key_state). Times are Unix milliseconds.
CREATE TABLE session (
    user_id      TEXT   PRIMARY KEY,
    -- unauthenticated, processing, authenticated or expired.
    status       TEXT   NOT NULL,
    since        BIGINT NOT NULL,
    last_seen_at BIGINT,
    expires_at   BIGINT
);

-- Statistics and the cleanup task count and sweep sessions by status.
CREATE INDEX session_status ON session (status, expires_at);

-- The audit trail, append-only: every security-relevant event (failures,
-- lockouts applied and expired, unlocks, strangers turned away, TOTP and
-- session changes). Alert kinds also feed WatchSecurityEvents. Identifiers
-- are kept in full: this table is read by admins, never written to logs.
CREATE TABLE security_event (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT  NOT NULL,
    kind        TEXT    NOT NULL,
    context     TEXT    NOT NULL DEFAULT '',
    rule        TEXT    NOT NULL DEFAULT '',
    user_id     TEXT    NOT NULL DEFAULT '',
    ip          TEXT    NOT NULL DEFAULT '',
    session_id  TEXT    NOT NULL DEFAULT '',
    -- For lockouts: the tier, its end (NULL when permanent).
    tier        INTEGER NOT NULL DEFAULT 0,
    until_at    BIGINT,
    permanent   BOOLEAN NOT NULL DEFAULT FALSE,
    -- The admin who acted (unlocks, resets, revocations).
    actor       TEXT    NOT NULL DEFAULT '',
    detail      TEXT    NOT NULL DEFAULT ''
);

-- ListAuditEvents filters by user and by kind, newest (highest id) first;
-- retention deletes by time.
CREATE INDEX security_event_user ON security_event (user_id, id);
CREATE INDEX security_event_kind ON security_event (kind, id);
CREATE INDEX security_event_at ON security_event (at);

-- Where the last cleanup pass stopped, shared by replicas, so each lock that
-- ends is reported as expired exactly once.
CREATE TABLE maintenance (
    name    TEXT   PRIMARY KEY,
    last_at BIGINT NOT NULL
);
