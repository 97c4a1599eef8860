"""Against real servers started by the fixtures: sshd and rsync, SMTP, the portal simulator, PostgreSQL,
Redis, and Dagster instances on disk in this process."""
