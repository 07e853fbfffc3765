"""Email identity: which spellings are one contact (`normalize_email`) and which addresses
are accepted at all (`clean_email`)."""

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from datamailer_core.repositories import scope
from datamailer_core.repositories.contacts import clean_email, get_or_create_contact, normalize_email


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("  Alice@Example.COM ", "alice@example.com"),
        ("user@exämple.com", "user@xn--exmple-cua.com"),
        ("User@EXÄMPLE.com", "user@XN--EXMPLE-CUA.COM"),
        ("Ünï@example.com", "ünï@example.com"),
    ],
)
def test_spellings_of_one_address_normalize_alike(a: str, b: str) -> None:
    assert normalize_email(a) == normalize_email(b)


def test_the_domain_is_kept_in_its_ascii_form() -> None:
    assert normalize_email("Ada@Exämple.COM") == "ada@xn--exmple-cua.com"


@pytest.mark.parametrize(
    ("a", "b"), [("SS@example.com", "ß@example.com"), ("ss@example.com", "ß@example.com")]
)
def test_local_parts_are_lowercased_not_casefolded(a: str, b: str) -> None:
    assert normalize_email(a) != normalize_email(b)


@pytest.mark.parametrize(
    "address",
    [
        "a" * 65 + "@example.com",
        "ä" * 33 + "@example.com",  # 66 octets in UTF-8
        "user@xn--zz.com",  # not a valid A-label
        "user@exa\u200emple.com",
        "a" * 10 + "@" + ".".join(["b" * 61] * 4) + ".com",  # 262 > 254 characters, domain 251
        "a@" + ".".join(["ä" * 20] * 8) + ".de",  # short in Unicode, too long as punycode
    ],
)
def test_addresses_over_the_limits_or_with_a_bad_domain_are_invalid(address: str) -> None:
    assert clean_email(address) is None


@pytest.mark.parametrize(
    "address", ["a" * 64 + "@example.com", "user@exämple.com", "user@xn--exmple-cua.com", "ß@example.com"]
)
def test_addresses_within_the_limits_are_valid(address: str) -> None:
    assert clean_email(address) == address


async def test_contacts_merge_by_identity(session: AsyncSession) -> None:
    org = (await scope.provision(session, organization="acme", audience="news", client="app")).organization.id
    unicode_domain, created = await get_or_create_contact(session, org, "user@exämple.com")
    punycode, again = await get_or_create_contact(session, org, "User@xn--exmple-cua.com")
    assert created
    assert not again
    assert punycode.id == unicode_domain.id
    upper, _ = await get_or_create_contact(session, org, "SS@example.com")
    sharp_s, created = await get_or_create_contact(session, org, "ß@example.com")
    assert created
    assert sharp_s.id != upper.id
