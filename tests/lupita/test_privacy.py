"""One normalisation of phone numbers for every service: however a number is written (by the
telephony vendor, the bridge's client, the voice agent), it hashes to one person."""

from __future__ import annotations

import base64
import os

import pytest

from lupita.privacy import InvalidPhoneNumber, decrypt_phone, encrypt_phone, normalize_phone, phone_hash

KEY = os.urandom(32)
FORMS = ["+52 951 555 0142", "+529515550142", "529515550142", "9515550142", "(951) 555-0142",
         "+52 1 951 555 0142", "521 951 555 0142", "044 951 555 0142", "01 951 555 0142", "0052 951 555 0142"]


@pytest.mark.parametrize("typed", FORMS)
def test_every_written_form_of_a_mexican_number_is_one_e164_and_one_hash(typed):
    assert normalize_phone(typed) == "+529515550142"
    assert phone_hash(typed, KEY) == phone_hash(FORMS[0], KEY)


def test_the_bridge_and_the_context_api_hash_the_same_form():
    from context_api.phones import person_hash

    for typed in FORMS:
        assert person_hash(typed, KEY) == phone_hash(typed, KEY)


def test_a_us_number_keeps_its_country_code():
    assert normalize_phone("+1 (202) 555-0142") == normalize_phone("1-202-555-0142") == "+12025550142"


@pytest.mark.parametrize("bad", ["", "12", "abc", "9" * 30, "+52 000", None])
def test_what_cannot_be_a_number_is_refused_without_echoing_it(bad):
    with pytest.raises(InvalidPhoneNumber) as info:
        normalize_phone(bad)
    assert "999" not in str(info.value)


def test_numbers_at_rest_are_encrypted_in_their_normal_form():
    blob = encrypt_phone("(951) 555-0142", KEY)
    assert b"951" not in blob and decrypt_phone(blob, KEY) == "+529515550142"
    assert base64.b64encode(blob) != base64.b64encode(encrypt_phone("(951) 555-0142", KEY))  # fresh nonce
