"""The pure parts of the Mailchimp sync: data centers, subscriber hashes, which mappings
cover a recipient-list key, and the member status of a contact."""

import pytest

from datamailer_core.mailchimp import (
    base_url,
    covers,
    datacenter,
    member_status,
    subscriber_hash,
    tag_changes,
)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("0123456789abcdef0123456789abcdef-us21", "us21"),
        ("abc123def456xxxxxxxxxxxxxxxxxxxx-us6", "us6"),
        ("0123456789abcdef0123456789abcdef", None),
        ("0123456789abcdef-US21", None),
        ("0123456789abcdef-us21/evil.example", None),
        ("-us21", None),
    ],
)
def test_the_data_center_comes_from_the_key_suffix(key: str, expected: str | None) -> None:
    assert datacenter(key) == expected


def test_the_base_url_is_the_key_data_center_unless_overridden() -> None:
    key = "0123456789abcdef0123456789abcdef-us21"
    assert base_url(key, None) == "https://us21.api.mailchimp.com/3.0"
    assert base_url(key, "http://127.0.0.1:8080/3.0/") == "http://127.0.0.1:8080/3.0"


def test_the_subscriber_hash_is_the_md5_of_the_lowercased_address() -> None:
    assert subscriber_hash(" Urist.McVankab@FreddieMac.com ") == "05b9d43160b5c68a327efe2a45c8b90c"


@pytest.mark.parametrize(
    ("list_key", "key", "expected"),
    [
        ("course:2025", "course:2025", True),
        ("course:2025", "course:2025:cohort-a", True),
        ("course", "course:2025:cohort-a", True),
        ("course:2025", "course:20250", False),
        ("course:2025:cohort-a", "course:2025", False),
        ("<all>", "anything", True),
    ],
)
def test_a_mapping_covers_its_node_and_descendants(list_key: str, key: str, expected: bool) -> None:
    assert covers(list_key, key) is expected


def test_leaving_a_list_deactivates_only_tags_nothing_else_keeps() -> None:
    mappings = [("course", "Courses"), ("course:2025", "2025"), ("<all>", "Everyone")]

    changes = tag_changes(mappings, added=[], removed=["course:2025:a"], current=["course:2024:b"])

    assert changes == [{"name": "2025", "status": "inactive"}]
    assert tag_changes(mappings, added=["course:2025:a"], removed=[], current=["course:2025:a"]) == [
        {"name": "2025", "status": "active"},
        {"name": "Courses", "status": "active"},
        {"name": "Everyone", "status": "active"},
    ]


def test_member_status() -> None:
    assert member_status(suppressed=False, unsubscribed=False, subscribed=True) == (
        "subscribed",
        "subscribed",
    )
    assert member_status(suppressed=True, unsubscribed=False, subscribed=True) == (
        "unsubscribed",
        "unsubscribed",
    )
    assert member_status(suppressed=False, unsubscribed=True, subscribed=False) == (
        "unsubscribed",
        "unsubscribed",
    )
    assert member_status(suppressed=False, unsubscribed=False, subscribed=False) == (None, "transactional")
