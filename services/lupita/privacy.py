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

_NON_DIGITS = re.compile(r"[^0-9]")
_NONCE_LEN = 12


class InvalidPhoneNumber(ValueError):
    """The value cannot be a phone number (too short, too long, no digits)."""


def normalize_phone(phone: str) -> str:
    """E.164-ish canonical form: '+' and digits only (``"+52 (951) 123-4567"`` -> ``"+529511234567"``)."""
    digits = _NON_DIGITS.sub("", phone or "")
    if not 7 <= len(digits) <= 15:
        raise InvalidPhoneNumber("phone number must have 7 to 15 digits")
    return "+" + digits


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
