"""Errors every store shares, and the one URL-masking helper their messages use."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to log and to show in an error)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


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
    password = urlsplit(url).password
    text = text.replace(url, mask_url(url))
    return text.replace(password, "***") if password else text
