"""The one error every store raises when it cannot be reached: masked URL, no password anywhere."""

from resources.errors import StoreUnavailableError, mask_url


def test_mask_url_hides_only_the_password() -> None:
    assert mask_url("http://alice:s3cret@db:8123/x") == "http://alice:***@db:8123/x"
    assert mask_url("http://db:6333") == "http://db:6333"


def test_a_driver_quoting_the_url_or_password_is_scrubbed() -> None:
    url = "postgresql+psycopg2://ops:hunter2@db:5432/optiinfra"
    error = StoreUnavailableError(
        "state store", url, f"could not reach {url}\nsecond line (password hunter2)"
    )
    message = str(error)
    assert (
        message == "state store unreachable at postgresql+psycopg2://ops:***@db:5432/optiinfra: "
        "could not reach postgresql+psycopg2://ops:***@db:5432/optiinfra"
    )
    assert "hunter2" not in message
