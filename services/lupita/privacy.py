"""Phone-number privacy: keyed hash for lookups, authenticated encryption at rest, redaction.

A plain sha256 of a phone number is reversible by enumerating the number space, so the
lookup hash is HMAC-SHA256 under a secret key. Numbers at rest are AES-256-GCM encrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_KEEP = re.compile(r"[^0-9+]")
_NONCE_LEN = 12
MAX_INPUT_CHARS = 40
DEFAULT_REGION = "MX"


class InvalidPhoneNumber(ValueError):
    """The value cannot be a phone number (the message never holds the number)."""


def normalize_phone(phone: str, *, default_region: str = DEFAULT_REGION) -> str:
    """The one canonical form of a phone number, E.164 (``"+529515550142"``), for every service:
    the bridge, the context API and the tools all hash THIS form, so the same person has one hash
    however the number was written.

    Parsed with Google's ``phonenumbers``. Mexican numbers come in shapes the library does not
    accept as they are: the old mobile "1" after the country code (``+52 1 951 555 0142``,
    ``521 951...``) and the retired dialling prefixes ``044``/``045`` (mobile) and ``01`` (long
    distance) before the 10-digit national number: they are rewritten to the 10-digit number
    first. A bare ``1`` + 10 digits is a US/Canada number with its country code but no ``+``.
    Anything else without ``+`` is read in ``default_region`` (Mexico): ``951 555 0142`` and
    ``(951) 555-0142`` are Mexican. Raises :class:`InvalidPhoneNumber` when it cannot be a number.
    """
    import phonenumbers

    if not isinstance(phone, str) or not phone.strip():
        raise InvalidPhoneNumber("no phone number")
    if len(phone) > MAX_INPUT_CHARS:
        raise InvalidPhoneNumber("phone number too long")
    text = _KEEP.sub("", phone)
    plus = text.startswith("+")
    digits = text.replace("+", "")
    if not 7 <= len(digits) <= 15:
        raise InvalidPhoneNumber("phone number must have 7 to 15 digits")
    candidate = "+" + digits if plus else digits
    if len(digits) == 13 and digits.startswith("521"):
        candidate = "+52" + digits[3:]  # +52 1 951 ...: the old mobile prefix
    elif not plus:
        if len(digits) == 13 and digits[:3] in ("044", "045"):
            candidate = digits[3:]
        elif len(digits) == 12 and digits.startswith("01"):
            candidate = digits[2:]
        elif len(digits) == 11 and digits.startswith("1"):
            candidate = "+" + digits  # 1 415 555 2671: US / Canada with its country code
    try:
        number = phonenumbers.parse(candidate, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidPhoneNumber("not a phone number") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidPhoneNumber("not a possible phone number for its country")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_hash(phone: str, key: bytes) -> str:
    """Keyed HMAC-SHA256 (hex) of the normalised number: the only form used for lookups."""
    return hmac.new(key, normalize_phone(phone).encode(), hashlib.sha256).hexdigest()


def encrypt_phone(phone: str, key: bytes) -> bytes:
    """AES-256-GCM of the normalised number; output is nonce || ciphertext+tag."""
    nonce = os.urandom(_NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, normalize_phone(phone).encode(), b"lupita-phone-v1")


def decrypt_phone(blob: bytes, key: bytes) -> str:
    return AESGCM(key).decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], b"lupita-phone-v1").decode()


def redact(phone_hash_hex: str) -> str:
    """Short, log-safe reference to a person (first 12 hex chars of the keyed hash)."""
    return phone_hash_hex[:12]
