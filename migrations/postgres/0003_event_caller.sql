-- The authenticated service or bot behind an admin action (its API key's or
-- client certificate's name), beside the admin user it acted for (actor):
-- a reviewer can tell which credential was used, not only which person.
-- Empty for events no caller caused directly (lockouts, expiries).
ALTER TABLE security_event ADD COLUMN caller TEXT NOT NULL DEFAULT '';
