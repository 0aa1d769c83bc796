-- pgbench: the durable work of one failure on the bench's one-rule context,
-- one failure a transaction: the key state upserted as authgate's write
-- shapes it and its audit event inserted, on authgate's own tables and
-- indexes. RecordFailure does this work for many failures in one statement
-- and one commit; this script is what batching is measured against.
-- `-D users=N` sets how many users the failures are spread over; the n-th
-- user is the bench's (bench-n, from 10.0.0.n on).
\set u random(1, :users)
WITH failed AS (
  INSERT INTO key_state AS k (context, rule, kind, user_id, ip, token, recent_failures,
      failures_total, last_failure_at, expires_at, version)
    SELECT 'pgbench', 'user_ip', 'user+ip', 'bench-' || :u,
      '10.' || (:u / 65536 % 256) || '.' || (:u / 256 % 256) || '.' || (:u % 256), '',
      ARRAY[now.at], 1, now.at, now.at + 1800000, 1
    FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS at) AS now
  ON CONFLICT ON CONSTRAINT key_state_pkey DO UPDATE SET
    recent_failures = k.recent_failures || EXCLUDED.recent_failures,
    failures_total = k.failures_total + 1, last_failure_at = EXCLUDED.last_failure_at,
    expires_at = EXCLUDED.expires_at, version = k.version + 1
  RETURNING context, rule, user_id, ip, last_failure_at)
INSERT INTO security_event (at, kind, context, rule, user_id, ip, caller)
  SELECT last_failure_at, 'failure_recorded', context, rule, user_id, ip, 'bench' FROM failed;
