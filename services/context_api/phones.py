"""The caller's phone number as people (and telephony vendors) write it, to E.164, with Google's
``phonenumbers``; then only its keyed hash (:func:`lupita.privacy.phone_hash`) is used.

Mexican numbers come in shapes the library does not accept as they are: the old mobile "1" after
the country code (``+52 1 951 555 0142``, ``521 951...``) and the retired dialling prefixes ``044``,
``045`` (mobile) and ``01`` (long distance) before the 10-digit national number. They are
rewritten to the 10-digit number first. A bare ``1`` + 10 digits is a US/Canada number written with
its country code but without ``+``. Everything else is parsed with the default region (MX), so
``951 555 0142`` and ``(951) 555-0142`` are Mexican; a US number needs its ``+1`` / ``1`` / ``001``.

The error never holds the number (it is logged and returned to the agent).
"""

from __future__ import annotations

import re

import phonenumbers

from lupita.privacy import phone_hash

_KEEP = re.compile(r"[^0-9+]")
MAX_INPUT_CHARS = 40


class InvalidPhone(ValueError):
    """Not a valid phone number of an accepted region (the message never holds the number)."""


def to_e164(raw: object, *, default_region: str = "MX", regions: tuple[str, ...] = ("MX", "US")) -> str:
    """``raw`` as E.164 (``"+529515550142"``), or :class:`InvalidPhone`."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidPhone("no phone number")
    if len(raw) > MAX_INPUT_CHARS:
        raise InvalidPhone("phone number too long")
    text = _KEEP.sub("", raw)
    plus = text.startswith("+")
    digits = text.replace("+", "")
    if not digits or not 7 <= len(digits) <= 15:
        raise InvalidPhone("a phone number has 7 to 15 digits")
    candidate = "+" + digits if plus else digits
    if plus and digits.startswith("521") and len(digits) == 13:
        candidate = "+52" + digits[3:]  # +52 1 951 ...: the old mobile prefix
    elif not plus:
        if len(digits) == 13 and digits.startswith("521"):
            candidate = "+52" + digits[3:]
        elif len(digits) == 13 and digits[:3] in ("044", "045"):
            candidate = digits[3:]
        elif len(digits) == 12 and digits.startswith("01"):
            candidate = digits[2:]
        elif len(digits) == 11 and digits.startswith("1"):
            candidate = "+" + digits  # 1 415 555 2671: US / Canada with its country code
    try:
        number = phonenumbers.parse(candidate, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidPhone("not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid phone number")
    region = phonenumbers.region_code_for_number(number)
    if regions and region not in regions:
        raise InvalidPhone(f"phone numbers of {region or 'that region'} are not served")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def person_hash(raw: object, key: bytes, *, default_region: str = "MX",
                regions: tuple[str, ...] = ("MX", "US")) -> str:
    """The keyed HMAC of the caller's normalised number: the only form the service keeps."""
    return phone_hash(to_e164(raw, default_region=default_region, regions=regions), key)
