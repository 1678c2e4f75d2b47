"""Errors every store shares, and the one URL-masking helper their messages use."""

from __future__ import annotations

import re

# Query parameters (and libpq keyword settings) whose value is a secret: ?password=..., sslpassword=...
_SECRET_PARAM = re.compile(
    r"(?i)(?<![a-z0-9_])((?:ssl)?password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)=([^&#\s,]*)"
)
# "something@" inside a driver's message: what it took for a user or host may hold part of a password.
_USERINFO_IN_TEXT = re.compile(r"[^\s\"'@/:]+@(?=[^\s\"'@/]+)")
# A URL inside free text (OPTIINFRA_PROMETHEUS_TARGETS holds several, comma separated).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,]+")


def _userinfo(url: str) -> tuple[str, str, str | None, str] | None:
    """(scheme://, user, password or None, what follows the '@'), or None when there is no userinfo.

    Not urlsplit: a password may hold '/', '?', '#' or '@' (unquoted), which urlsplit reads as the
    end of the host. The userinfo ends at the last '@' before the path; when the part before the first
    '/', '?' or '#' holds no '@', the password holds one of those, and the userinfo ends at the last '@'.
    """
    start = url.find("://")
    if start < 0:
        return None
    prefix, rest = url[: start + 3], url[start + 3 :]
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    at = authority.rfind("@") if "@" in authority else rest.rfind("@")
    if at < 0:
        return None
    user, sep, password = rest[:at].partition(":")
    return prefix, user, password if sep else None, rest[at + 1 :]


def mask_url(url: str) -> str:
    """The URL with its password and any secret query parameter replaced by ``***`` (safe to log and to
    show in an error)."""
    parts = _userinfo(url)
    if parts is not None and parts[2] is not None:
        prefix, user, _, rest = parts
        url = f"{prefix}{user}:***@{rest}"
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}=***", url)


def mask_secrets(text: str) -> str:
    """Free text (a setting's value, a driver's message) with every URL in it masked."""
    return _SECRET_PARAM.sub(
        lambda m: f"{m.group(1)}=***", _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    )


class StoreUnavailableError(RuntimeError):
    """A store could not be reached or opened. The message names the (masked) URL and the reason."""

    def __init__(self, store: str, url: str, reason: object) -> None:
        self.store = store
        self.url = mask_url(url)
        text = _scrub(str(reason), url).strip()
        first_line = text.splitlines()[0] if text else type(reason).__name__
        super().__init__(f"{store} unreachable at {self.url}: {first_line}")


def _scrub(text: str, url: str) -> str:
    """The text without the URL's password, should a driver have quoted the URL in its error."""
    parts = _userinfo(url)
    text = mask_secrets(text.replace(url, mask_url(url)))
    password = parts[2] if parts is not None else None
    text = text.replace(password, "***") if password else text
    # A driver that split an unencoded '@' of the password differently quotes the rest as "pw@host".
    return _USERINFO_IN_TEXT.sub("***@", text) if parts is not None else text
