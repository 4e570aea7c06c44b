"""The caller's phone number as people (and telephony vendors) write it, to E.164 with the one
normalisation every service uses (:func:`lupita.privacy.normalize_phone`, Google's
``phonenumbers`` with the Mexican legacy prefixes), then checked as a valid number of a served
region; after that only its keyed hash (:func:`lupita.privacy.phone_hash`) is used.

The error never holds the number (it is logged and returned to the agent).
"""

from __future__ import annotations

import phonenumbers

from lupita.privacy import InvalidPhoneNumber, normalize_phone, phone_hash

class InvalidPhone(ValueError):
    """Not a valid phone number of an accepted region (the message never holds the number)."""


def to_e164(raw: object, *, default_region: str = "MX", regions: tuple[str, ...] = ("MX", "US")) -> str:
    """``raw`` as E.164 (``"+529515550142"``), or :class:`InvalidPhone`."""
    try:
        e164 = normalize_phone(raw, default_region=default_region)  # type: ignore[arg-type]
    except InvalidPhoneNumber as exc:
        raise InvalidPhone(str(exc)) from None
    number = phonenumbers.parse(e164)
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid phone number")
    region = phonenumbers.region_code_for_number(number)
    if regions and region not in regions:
        raise InvalidPhone(f"phone numbers of {region or 'that region'} are not served")
    return e164


def person_hash(raw: object, key: bytes, *, default_region: str = "MX",
                regions: tuple[str, ...] = ("MX", "US")) -> str:
    """The keyed HMAC of the caller's normalised number: the only form the service keeps."""
    return phone_hash(to_e164(raw, default_region=default_region, regions=regions), key)
