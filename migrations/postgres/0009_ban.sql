-- Admins' bans (AdminService.Ban): one row per banned key, or per banned
-- range of addresses, in one context or in every one. A range is one row
-- however many addresses it holds: the service looks a request's address
-- up under each prefix length a ban uses, never per address.
CREATE TABLE ban (
    -- A configured context, or '' for every context (those added later
    -- included).
    context    TEXT   NOT NULL,
    -- user, ip, user+ip, session or password, as in key_state; a range is
    -- an ip ban whose ip is a network.
    kind       TEXT   NOT NULL,
    user_id    TEXT   NOT NULL DEFAULT '',
    -- An address, or a network in CIDR form ("10.0.0.0/16").
    ip         TEXT   NOT NULL DEFAULT '',
    -- A session id or a password key, as in key_state.
    token      TEXT   NOT NULL DEFAULT '',
    reason     TEXT   NOT NULL,
    -- The admin who banned, and the caller they acted through.
    actor      TEXT   NOT NULL,
    caller     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    -- NULL: until an admin lifts it.
    until_at   BIGINT,
    PRIMARY KEY (context, kind, user_id, ip, token)
);

-- The cleanup pass finds the bans that ran out.
CREATE INDEX ban_until_at ON ban (until_at) WHERE until_at IS NOT NULL;
