"""Every ORM model; importing this package registers all tables on `Base.metadata`."""

from datamailer_core.db.base import Base
from datamailer_core.models.campaigns import Campaign, CampaignRecipient
from datamailer_core.models.contacts import (
    CategoryPreference,
    Contact,
    ContactTag,
    Subscription,
    Suppression,
    Tag,
)
from datamailer_core.models.events import EmailEvent
from datamailer_core.models.lists import RecipientList, RecipientListMember
from datamailer_core.models.mailchimp import MailchimpAccount, MailchimpSync, MailchimpTagMapping
from datamailer_core.models.rate import SendRateState
from datamailer_core.models.scope import Audience, Client, ClientApiKey, Organization
from datamailer_core.models.transactional import EmailTemplate, TransactionalMessage
from datamailer_core.models.verification import SubscriptionVerification
from datamailer_core.models.webhooks import WebhookDelivery, WebhookEndpoint

__all__ = [
    "Audience",
    "Base",
    "Campaign",
    "CampaignRecipient",
    "CategoryPreference",
    "Client",
    "ClientApiKey",
    "Contact",
    "ContactTag",
    "EmailEvent",
    "EmailTemplate",
    "MailchimpAccount",
    "MailchimpSync",
    "MailchimpTagMapping",
    "Organization",
    "RecipientList",
    "RecipientListMember",
    "SendRateState",
    "Subscription",
    "SubscriptionVerification",
    "Suppression",
    "Tag",
    "TransactionalMessage",
    "WebhookDelivery",
    "WebhookEndpoint",
]
