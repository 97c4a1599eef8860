"""Secrets (passwords, client passwords, access tokens) never reach a log line or an exception
message: texts that could carry one are scrubbed first (`scrub`), and the request log of urllib3,
which would print the access token from the visits URL, is redacted (`install_urllib3_redaction`)."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

ACCESS_TOKEN_IN_URL = re.compile(r"(access_token=)[^&\s\"')]+")
# Shorter "secrets" would mask ordinary words and numbers of the message.
_SHORTEST_SECRET = 3


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every `access_token=...` and every one of `secrets` masked as `***` (longest first,
    so that a secret holding another is masked whole)."""
    text = ACCESS_TOKEN_IN_URL.sub(r"\1***", text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret and len(secret) >= _SHORTEST_SECRET:
            text = text.replace(secret, "***")
    return text


class _RedactAccessTokens(logging.Filter):
    """Hide `access_token=...` in urllib3's request log ("GET /...?access_token=T HTTP/1.1" 200)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to fix
            return True
        if "access_token=" in message:
            record.msg = ACCESS_TOKEN_IN_URL.sub(r"\1***", message)
            record.args = ()
        return True


_redaction_lock = threading.Lock()


def install_urllib3_redaction() -> None:
    """Redact access tokens in urllib3's request log; once per logger however often called."""
    # Filters on a logger apply only to records created by that very logger,
    # so the filter goes on each urllib3 logger that prints request URLs.
    with _redaction_lock:
        for name in ("urllib3.connectionpool", "urllib3.util.retry"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactAccessTokens) for f in logger.filters):
                logger.addFilter(_RedactAccessTokens())
