"""The names the modules agree on: jobs and their ops, the run-kind tag, the rsync pool, the sensor's interval override.

No imports, so that any module can use them: logs.py is read by config-level
code before any Dagster definition exists, and jobs.py imports the assets.
"""

# The dynamic partitions, one key per EPN (partitions.py defines them; the instance is asked by this name).
EPN_PARTITIONS_NAME = "epn"
KIND_TAG = "assyncy/kind"
REPATRIATION_JOB = "repatriate_epn"
ALERT_JOB = "unknown_epn_alert"
VERIFY_JOB = "verify_epn_data"
REPORT_JOB = "repatriation_report_job"
FIXITY_JOB = "fixity_audit"
# The ops whose run config names a run's EPNs (read and written only through run_configs.py).
REPATRIATION_OP = "repatriate_epns"
ALERT_OP = "send_unknown_epn_alert_op"
# The concurrency pool that lets `max-tasks` transfers run at once, whoever launched them.
RSYNC_POOL = "rsync"
# Seconds between epn_sensor's evaluations instead of its 30 s (the demo, tests, benchmarks).
INTERVAL_ENV = "ASSYNCY_SENSOR_INTERVAL_SECONDS"
