"""The eligibility rules, as pure functions: what blocks marketing and transactional mail."""

from datetime import UTC, datetime
from typing import Any

import pytest

from datamailer_core import policy
from datamailer_core.models.contacts import BAD_VALIDATION_STATUSES, VALIDATION_STATUSES

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MARKETABLE: dict[str, Any] = {
    "verified": True,
    "global_unsubscribed_at": None,
    "hard_bounced_at": None,
    "complained_at": None,
    "validation_status": "valid",
    "client_status": "subscribed",
    "audience_status": None,
}


def test_a_verified_subscribed_clean_contact_may_receive_marketing() -> None:
    assert policy.can_send_marketing(**MARKETABLE) is True


@pytest.mark.parametrize(
    "change",
    [
        {"verified": False},
        {"global_unsubscribed_at": NOW},
        {"hard_bounced_at": NOW},
        {"complained_at": NOW},
        {"client_status": "pending"},
        {"client_status": "unsubscribed"},
        {"client_status": None},
        {"audience_status": "unsubscribed"},
    ],
)
def test_each_condition_alone_blocks_marketing(change: dict[str, Any]) -> None:
    assert policy.can_send_marketing(**{**MARKETABLE, **change}) is False


@pytest.mark.parametrize("status", VALIDATION_STATUSES)
def test_exactly_the_five_bad_validation_statuses_block_marketing(status: str) -> None:
    allowed = policy.can_send_marketing(**{**MARKETABLE, "validation_status": status})
    assert allowed is (status not in BAD_VALIDATION_STATUSES)
    assert len(BAD_VALIDATION_STATUSES) == 5


def test_a_global_unsubscribe_is_marketing_suppression_but_not_transactional() -> None:
    assert policy.marketing_suppressed(NOW, None, None) is True
    assert policy.can_send_transactional(None, None) is True
    assert (
        policy.transactional_block_reason(hard_bounced=False, complained=False, global_unsubscribed=True)
        is None
    )


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"hard_bounced": True}, "hard_bounce"),
        ({"complained": True}, "complaint"),
        ({"hard_bounced": True, "complained": True}, "hard_bounce"),
    ],
)
def test_bounces_and_complaints_block_transactional_mail(state: dict[str, Any], reason: str) -> None:
    full = {"hard_bounced": False, "complained": False, **state}
    assert policy.transactional_block_reason(**full) == reason
    at = {k: NOW if v else None for k, v in full.items()}
    assert policy.can_send_transactional(at["hard_bounced"], at["complained"]) is False


def test_with_a_category_a_global_unsubscribe_or_disabled_category_blocks_transactional() -> None:
    clean: dict[str, Any] = {"hard_bounced": False, "complained": False}
    assert policy.transactional_block_reason(**clean, category_tag="news") is None
    assert (
        policy.transactional_block_reason(**clean, global_unsubscribed=True, category_tag="news")
        == "global_unsubscribe"
    )
    assert (
        policy.transactional_block_reason(**clean, category_tag="news", category_enabled=False)
        == "category_unsubscribe"
    )
    # Without a category, a disabled category is irrelevant.
    assert policy.transactional_block_reason(**clean, category_enabled=False) is None
