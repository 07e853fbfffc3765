"""SES notification samples shaped after AWS's documented examples ("Examples of event
data that Amazon SES publishes to Amazon SNS" for event publishing, `eventType`;
"Amazon SNS notification examples for Amazon SES" for identity notifications,
`notificationType`), with the ids and addresses a test needs, and the two ways SNS → SQS
delivers them: the SNS envelope, or the SES JSON itself (raw message delivery)."""

import json
import uuid
from collections.abc import Sequence
from typing import Any, Literal

Form = Literal["event", "classic"]


def _mail(message_id: str, destination: Sequence[str], form: Form) -> dict[str, Any]:
    mail: dict[str, Any] = {
        "timestamp": "2017-08-05T00:40:02.012Z",
        "source": "Sender Name <sender@example.com>",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
        "sendingAccountId": "123456789012",
        "messageId": message_id,
        "destination": list(destination),
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": "Sender Name <sender@example.com>"},
            {"name": "To", "value": ", ".join(destination)},
            {"name": "Subject", "value": "Message sent from Amazon SES"},
            {"name": "MIME-Version", "value": "1.0"},
        ],
        "commonHeaders": {
            "from": ["Sender Name <sender@example.com>"],
            "to": list(destination),
            "messageId": message_id,
            "subject": "Message sent from Amazon SES",
        },
    }
    if form == "event":
        mail["tags"] = {
            "ses:configuration-set": ["ConfigSet"],
            "ses:source-ip": ["192.0.2.0"],
            "ses:from-domain": ["example.com"],
            "ses:caller-identity": ["ses_user"],
        }
    else:
        mail["sourceIp"] = "127.0.3.0"
        mail["callerIdentity"] = "IAM_user_or_role_name"
    return mail


def _typed(kind: str, form: Form, message_id: str, destination: Sequence[str], **body: Any) -> dict[str, Any]:
    key = "eventType" if form == "event" else "notificationType"
    return {key: kind, **body, "mail": _mail(message_id, destination, form)}


def bounce(
    message_id: str,
    recipients: Sequence[str] = ("recipient@example.com",),
    *,
    bounce_type: str = "Permanent",
    subtype: str = "General",
    form: Form = "event",
) -> dict[str, Any]:
    status, code = ("5.1.1", "smtp; 550 5.1.1 user unknown") if bounce_type == "Permanent" else (
        "4.4.7",
        "smtp; 452 4.2.2 The email account that you tried to reach is over quota",
    )  # fmt: skip
    return _typed(
        "Bounce",
        form,
        message_id,
        recipients,
        bounce={
            "bounceType": bounce_type,
            "bounceSubType": subtype,
            "bouncedRecipients": [
                {"emailAddress": r, "action": "failed", "status": status, "diagnosticCode": code}
                for r in recipients
            ],
            "timestamp": "2017-08-05T00:41:02.669Z",
            "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
            "reportingMTA": "dsn; mta.example.com",
        },
    )


def complaint(
    message_id: str,
    recipients: Sequence[str] = ("recipient@example.com",),
    *,
    feedback_type: str = "abuse",
    form: Form = "event",
) -> dict[str, Any]:
    return _typed(
        "Complaint",
        form,
        message_id,
        recipients,
        complaint={
            "complainedRecipients": [{"emailAddress": r} for r in recipients],
            "timestamp": "2017-08-05T00:41:02.669Z",
            "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
            "complaintFeedbackType": feedback_type,
            "arrivalDate": "2017-08-05T00:41:02.669Z",
        },
    )


def delivery(
    message_id: str, recipient: str = "recipient@example.com", *, form: Form = "event"
) -> dict[str, Any]:
    return _typed(
        "Delivery",
        form,
        message_id,
        [recipient],
        delivery={
            "timestamp": "2016-10-19T23:21:04.133Z",
            "processingTimeMillis": 11893,
            "recipients": [recipient],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": "mta.example.com",
        },
    )


def delivery_delay(message_id: str, recipient: str = "recipient@example.com") -> dict[str, Any]:
    return _typed(
        "DeliveryDelay",
        "event",
        message_id,
        [recipient],
        deliveryDelay={
            "timestamp": "2020-06-16T00:15:40.641Z",
            "delayType": "InternalFailure",
            "expirationTime": "2020-06-16T00:25:40.914Z",
            "delayedRecipients": [
                {
                    "emailAddress": recipient,
                    "status": "4.4.1",
                    "diagnosticCode": "smtp; 421 4.4.1 Unable to connect to remote host",
                }
            ],
        },
    )


def reject(message_id: str, recipient: str = "recipient@example.com") -> dict[str, Any]:
    return _typed("Reject", "event", message_id, [recipient], reject={"reason": "Bad content"})


def rendering_failure(message_id: str, recipient: str = "recipient@example.com") -> dict[str, Any]:
    return _typed(
        "Rendering Failure",
        "event",
        message_id,
        [recipient],
        failure={
            "errorMessage": "Attribute 'attributeName' is not present in the rendering data.",
            "templateName": "MyTemplate",
        },
    )


def sns_envelope(message: dict[str, Any], sns_message_id: str | None = None) -> dict[str, Any]:
    """The body SNS → SQS delivers without raw message delivery."""
    return {
        "Type": "Notification",
        "MessageId": sns_message_id or str(uuid.uuid4()),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-feedback",
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(message),
        "Timestamp": "2017-08-05T00:41:03.012Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858f"
        "iTDN6bkkOxYDVrY0Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"
        "&SubscriptionArn=arn:aws:sns:us-east-1:123456789012:ses-feedback:c9a1b2d3",
    }
