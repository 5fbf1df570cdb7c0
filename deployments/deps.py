"""Request dependencies shared by the routes."""

import hmac
from typing import Annotated

from fastapi import Depends, Request

from handai.config import Settings
from handai.errors import HandaiError


def settings_of(request: Request) -> Settings:
    found: Settings = request.app.state.settings
    return found


def require_key(request: Request) -> None:
    """X-Api-Key, compared in constant time, when the key is enabled."""
    security = settings_of(request).security
    if not security.api_key_enabled or security.api_key is None:
        return
    given = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), security.api_key.get_secret_value().encode()):
        raise HandaiError("unauthorized", "missing or wrong X-Api-Key")


Authorized = Annotated[None, Depends(require_key)]
AppSettings = Annotated[Settings, Depends(settings_of)]
