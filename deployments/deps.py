"""Request dependencies shared by the routes.

All async: FastAPI runs a sync dependency on a worker thread, a thread hop on every read
for a few microseconds of work.
"""

import hmac
from typing import Annotated

from fastapi import Depends, Request

from handai.config import Settings
from handai.errors import HandaiError


def _settings(request: Request) -> Settings:
    found: Settings = request.app.state.settings
    return found


async def settings_of(request: Request) -> Settings:
    return _settings(request)


def _matches(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode(), key.encode())  # constant time


async def require_key(request: Request) -> None:
    """The read key, when it is enforced."""
    security = _settings(request).security
    if not security.api_key_enabled or security.api_key is None:
        return
    if not _matches(request, security.api_key.get_secret_value()):
        raise HandaiError("unauthorized", "missing or wrong X-Api-Key")


async def require_admin(request: Request) -> None:
    """The admin key, always: with none configured admin is off; the read key never does."""
    admin = _settings(request).security.admin_key
    if admin is None:
        raise HandaiError(
            "admin_disabled",
            "admin operations are off: set security.admin_key (SECURITY__ADMIN_KEY) to use them",
        )
    if not _matches(request, admin.get_secret_value()):
        raise HandaiError("unauthorized", "missing or wrong X-Api-Key for admin operations")


Authorized = Annotated[None, Depends(require_key)]
Admin = Annotated[None, Depends(require_admin)]
AppSettings = Annotated[Settings, Depends(settings_of)]
