"""The Australian Synchrotron User Portal API: who visited which beamline when. No Dagster imports:
the resources, the CLI and the tests share it; the visits it gives are domain.py's.

- `errors`: what the client raises (never "no visits" for a failure: an empty answer would look
  like a quiet week).
- `answers`: the API's JSON checked and read into domain visits; a malformed visit is named and
  skipped, never guessed at.
- `redaction`: secrets kept out of log lines and exception messages.
- `watchdog`: one deadline per request, kept by cutting the connection.
- `client`: `PortalClient`: OAuth password grant, retries, re-authentication, bounded answers.
"""
