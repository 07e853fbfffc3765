"""The deployment template and its parameter files, checked as `datamailer infra validate`
and `cfn-lint` check them before anything reaches AWS; broken copies are refused."""

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from datamailer_server import infra
from datamailer_server.main import app

TEMPLATE = infra.DEFAULT_TEMPLATE
PARAMETERS = infra.DEFAULT_PARAMETERS


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return infra.load_template(TEMPLATE)


@pytest.fixture
def mutable(template: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(template)


def problems_of(data: dict[str, Any]) -> list[str]:
    return infra.check_template(data)[0]


def statements(data: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return data["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


def test_the_real_template_and_example_parameters_validate(template: dict[str, Any]) -> None:
    report = infra.validate(TEMPLATE, PARAMETERS)

    assert report.problems == []
    assert "4 queues with DLQs, 4 workers with their own roles, 1 database" in report.lines[0]
    assert len(report.lines) == 1 + len(PARAMETERS)


def test_short_tags_load_as_their_long_forms(template: dict[str, Any]) -> None:
    queue = template["Resources"]["TransactionalEmailQueue"]["Properties"]
    function = template["Resources"]["CampaignEmailWorker"]["Properties"]

    assert queue["QueueName"] == {"Fn::Sub": "datamailer-${Environment}-transactional-email"}
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["TransactionalEmailDeadLetterQueue", "Arn"]
    }
    assert function["Code"]["S3Key"] == {"Ref": "LambdaArtifactKey"}


def test_every_worker_has_the_specified_runtime_and_limits(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    for worker in infra.WORKERS:
        props = resources[infra.logical_prefix(worker.queue) + "Worker"]["Properties"]
        assert props["Handler"] == "datamailer_workers.lambda_handler.handler"
        assert (props["Runtime"], props["Architectures"]) == ("python3.12", ["arm64"])
        assert props["ReservedConcurrentExecutions"] == worker.reserved_concurrency


def test_cfn_lint_passes_on_the_template() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_a_queue_without_its_redrive_is_refused(mutable: dict[str, Any]) -> None:
    del mutable["Resources"]["CampaignEmailQueue"]["Properties"]["RedrivePolicy"]

    assert problems_of(mutable) == ["queue campaign-email: no RedrivePolicy (no dead-letter queue)"]


def test_a_queue_whose_dlq_is_gone_is_refused(mutable: dict[str, Any]) -> None:
    del mutable["Resources"]["SesWebhooksDeadLetterQueue"]

    assert "queue ses-webhooks: its DLQ ses-webhooks-dlq is missing" in problems_of(mutable)


def test_a_queue_without_long_polling_is_refused(mutable: dict[str, Any]) -> None:
    mutable["Resources"]["EmailEventsQueue"]["Properties"]["ReceiveMessageWaitTimeSeconds"] = 0

    assert problems_of(mutable) == [
        "queue email-events: ReceiveMessageWaitTimeSeconds must be 20 (long polling)"
    ]


def test_a_visibility_timeout_shorter_than_the_worker_allows_is_refused(mutable: dict[str, Any]) -> None:
    mutable["Resources"]["CampaignEmailQueue"]["Properties"]["VisibilityTimeout"] = 120

    assert problems_of(mutable) == [
        "queue campaign-email: VisibilityTimeout 120 s is under 6x the worker's timeout (120 s)"
    ]


def test_a_role_gaining_sqs_star_is_refused(mutable: dict[str, Any]) -> None:
    statements(mutable, "TransactionalEmailWorkerRole")[0]["Action"].append("sqs:*")

    assert problems_of(mutable) == ["role of transactional-email: wildcard action sqs:*"]


def test_a_role_reaching_another_workers_queue_is_refused(mutable: dict[str, Any]) -> None:
    statements(mutable, "EmailEventsWorkerRole")[0]["Resource"] = [
        {"Fn::GetAtt": ["EmailEventsQueue", "Arn"]},
        {"Fn::GetAtt": ["TransactionalEmailQueue", "Arn"]},
    ]

    problems = problems_of(mutable)

    assert "role of email-events: sqs:ReceiveMessage reaches beyond its own queue and DLQ" in problems
    assert all(p.startswith("role of email-events:") for p in problems)


def test_the_webhook_worker_gaining_ses_send_rights_is_refused(mutable: dict[str, Any]) -> None:
    sender = next(s for s in statements(mutable, "CampaignEmailWorkerRole") if s["Sid"] == "SendThroughSes")
    statements(mutable, "SesWebhooksWorkerRole").append(copy.deepcopy(sender))

    assert problems_of(mutable) == [
        "role of ses-webhooks: ses:SendEmail is for the sending workers only",
        "role of ses-webhooks: ses:SendRawEmail is for the sending workers only",
        "role of ses-webhooks: ses:SendBulkEmail is for the sending workers only",
    ]


def test_a_worker_with_the_wrong_concurrency_or_handler_is_refused(mutable: dict[str, Any]) -> None:
    props = mutable["Resources"]["TransactionalEmailWorker"]["Properties"]
    props["ReservedConcurrentExecutions"] = 40
    props["Handler"] = "datamailer_workers.lambda_handler.missing"

    assert problems_of(mutable) == [
        "worker transactional-email: ReservedConcurrentExecutions must be 4, not 40",
        "worker transactional-email: handler datamailer_workers.lambda_handler.missing "
        "is not a function of datamailer_workers.lambda_handler",
    ]


def test_a_mapping_without_partial_batch_failures_is_refused(mutable: dict[str, Any]) -> None:
    del mutable["Resources"]["CampaignEmailEventSourceMapping"]["Properties"]["FunctionResponseTypes"]

    assert problems_of(mutable) == [
        "worker campaign-email: event source mapping lacks FunctionResponseTypes ReportBatchItemFailures"
    ]


def test_a_public_or_unencrypted_database_is_refused(mutable: dict[str, Any]) -> None:
    database = mutable["Resources"]["Database"]
    database["Properties"]["PubliclyAccessible"] = True
    del database["Properties"]["StorageEncrypted"]
    database["DeletionPolicy"] = "Delete"

    assert problems_of(mutable) == [
        "database Database: StorageEncrypted must be true",
        "database Database: PubliclyAccessible must be false",
        "database Database: DeletionPolicy must be Snapshot",
    ]


def test_ses_events_not_reaching_ses_webhooks_are_refused(mutable: dict[str, Any]) -> None:
    del mutable["Resources"]["SesWebhooksQueuePolicy"]

    assert problems_of(mutable) == ["ses: no queue policy lets the events topic send to ses-webhooks"]


def test_a_removed_alarm_is_refused(mutable: dict[str, Any]) -> None:
    del mutable["Resources"]["CampaignEmailDlqDepthAlarm"]

    assert problems_of(mutable) == ["alarm CampaignEmailDlqDepthAlarm: missing"]


def test_a_dlq_alarm_that_tolerates_messages_is_refused(mutable: dict[str, Any]) -> None:
    mutable["Resources"]["TransactionalEmailDlqDepthAlarm"]["Properties"]["Threshold"] = 10

    assert problems_of(mutable) == [
        "alarm TransactionalEmailDlqDepthAlarm: must fire on any message in transactional-email-dlq"
    ]


def _rows(path: Path) -> list[dict[str, str]]:
    return json.loads(path.read_text())


def test_a_parameter_file_missing_a_parameter_is_refused(template: dict[str, Any], tmp_path: Path) -> None:
    rows = [r for r in _rows(PARAMETERS[0]) if r["ParameterKey"] not in ("AlarmTopicArn", "MaxReceiveCount")]
    broken = tmp_path / "staging.parameters.example.json"
    broken.write_text(json.dumps(rows))

    assert infra.check_parameters(template, broken) == [
        "missing parameter MaxReceiveCount",
        "missing required parameter AlarmTopicArn",
    ]


def test_a_parameter_file_with_unknown_or_invalid_values_is_refused(
    template: dict[str, Any], tmp_path: Path
) -> None:
    rows = _rows(PARAMETERS[1])
    for row in rows:
        if row["ParameterKey"] == "Environment":
            row["ParameterValue"] = "prod"
    rows.append({"ParameterKey": "WebAmiId", "ParameterValue": "ami-123"})
    broken = tmp_path / "production.parameters.example.json"
    broken.write_text(json.dumps(rows))

    assert infra.check_parameters(template, broken) == [
        "parameter Environment='prod' is not one of staging, production",
        "unknown parameter WebAmiId (not in the template)",
    ]


def test_a_private_parameter_file_with_placeholders_left_is_refused(
    template: dict[str, Any], tmp_path: Path
) -> None:
    rows = _rows(PARAMETERS[0])
    for row in rows:
        row["ParameterValue"] = row["ParameterValue"].replace("REPLACE", "filled")
    vpc = next(r for r in rows if r["ParameterKey"] == "VpcId")
    vpc["ParameterValue"] = "vpc-REPLACE"
    private = tmp_path / "staging.parameters.private.json"
    private.write_text(json.dumps(rows))

    assert infra.check_parameters(template, private) == ["parameter VpcId still holds a REPLACE placeholder"]
    vpc["ParameterValue"] = "vpc-0abc1234"
    private.write_text(json.dumps(rows))
    assert infra.check_parameters(template, private) == []


def test_the_example_parameter_files_name_every_template_parameter(template: dict[str, Any]) -> None:
    for path in PARAMETERS:
        assert [r["ParameterKey"] for r in _rows(path)] == list(template["Parameters"])


def test_the_command_accepts_the_real_files() -> None:
    result = CliRunner().invoke(app, ["infra", "validate"])

    assert result.exit_code == 0, result.output
    assert "4 workers with their own roles" in result.output


def test_the_command_refuses_a_broken_copy_in_one_line(mutable: dict[str, Any], tmp_path: Path) -> None:
    del mutable["Resources"]["TransactionalEmailQueue"]["Properties"]["RedrivePolicy"]
    broken = tmp_path / "datamailer.json"
    broken.write_text(json.dumps(mutable))

    result = CliRunner().invoke(
        app, ["infra", "validate", "--template", str(broken), "--parameters", str(PARAMETERS[0])]
    )

    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {broken}: queue transactional-email: no RedrivePolicy (no dead-letter queue)"
    ]


def test_the_command_refuses_an_unreadable_template_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "datamailer.yaml"
    broken.write_text("Resources: [unclosed\n")

    result = CliRunner().invoke(app, ["infra", "validate", "--template", str(broken)])

    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"error: {broken}: not a template")
