"""The portal's settings: OPTIINFRA_PORTAL_* variables, validated in one place."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PortalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPTIINFRA_PORTAL_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to bind: this machine only by default.")
    port: int = Field(3001, ge=1, le=65535, description="Port of the portal (the Dagster UI has 3000).")
    session_ttl_min: int = Field(480, ge=1, le=43_200, description="Minutes a login session lasts.")
    secure_cookies: bool = Field(False, description="Mark cookies Secure (set when served over HTTPS).")
    max_body_bytes: int = Field(16_384, ge=256, le=10_000_000, description="Largest request body accepted.")
    login_attempts_per_min: int = Field(10, ge=1, description="Login attempts per client and user a minute.")
    decisions_per_min: int = Field(30, ge=1, description="Decisions one user may post a minute.")
    live_poll_s: float = Field(1.0, gt=0, le=60, description="How often the live feed reads the stores.")
    notify_poll_s: float = Field(10.0, gt=0, le=3600, description="How often notifications are sent.")
    # OpenID Connect for production: set all three to enable it (the local users' roles still apply).
    oidc_issuer: str = Field("", description="OIDC issuer URL, e.g. https://login.example.com/realms/x")
    oidc_client_id: str = Field("", description="OIDC client id.")
    oidc_client_secret: str = Field("", description="OIDC client secret.")
    oidc_username_claim: str = Field("preferred_username", description="ID-token claim naming the user.")

    @property
    def oidc_enabled(self) -> bool:
        return bool(self.oidc_issuer and self.oidc_client_id and self.oidc_client_secret)
