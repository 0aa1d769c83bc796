-- Recovery codes (VerifyTotp.recovery_code): one row per code not used
-- yet. A code is kept only as HMAC-SHA256 over the user id and the code,
-- under a key derived from the TOTP key that key_id names (which lives
-- outside the database): a stolen database lets nobody test codes offline.
-- Using a code deletes its row, so of two replicas racing with one code,
-- exactly one deletes it.
CREATE TABLE recovery_code (
    user_id    TEXT   NOT NULL,
    hmac       BLOB   NOT NULL,
    key_id     TEXT   NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, hmac)
);
