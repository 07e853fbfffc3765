"""Local checks of the CloudFormation template and its parameter files (no AWS calls).

`cfn-lint` checks that the template is valid CloudFormation; this checks that it is the
deployment spec/runtime.md describes: every queue with its DLQ, the workers' runtime and
limits, least-privilege roles, a private encrypted database, SES events routed to
ses-webhooks, and every alarm the operations runbook relies on.
"""

import importlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from datamailer_core.contracts import DLQ_SUFFIX

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE: Final = REPO_ROOT / "infra" / "cloudformation" / "datamailer.yaml"
DEFAULT_PARAMETERS: Final = (
    REPO_ROOT / "infra" / "config" / "staging.parameters.example.json",
    REPO_ROOT / "infra" / "config" / "production.parameters.example.json",
)


@dataclass(frozen=True)
class WorkerSpec:
    queue: str
    reserved_concurrency: int
    sends_email: bool


WORKERS: Final = (
    WorkerSpec("transactional-email", 4, sends_email=True),
    WorkerSpec("campaign-email", 2, sends_email=True),
    WorkerSpec("ses-webhooks", 2, sends_email=False),
    WorkerSpec("email-events", 1, sends_email=False),
)
RUNTIME: Final = "python3.12"
ARCHITECTURE: Final = "arm64"
LONG_POLL_SECONDS: Final = 20
# AWS's guidance for SQS event sources: visibility timeout at least six times the function's.
VISIBILITY_FACTOR: Final = 6
SES_SEND_ACTIONS: Final = frozenset({"ses:sendemail", "ses:sendrawemail", "ses:sendbulkemail"})
SQS_QUEUE_ACTIONS: Final = frozenset(
    {
        "sqs:receivemessage",
        "sqs:deletemessage",
        "sqs:changemessagevisibility",
        "sqs:getqueueattributes",
        "sqs:getqueueurl",
        "sqs:sendmessage",
    }
)
LOG_ACTIONS: Final = frozenset({"logs:createlogstream", "logs:putlogevents"})
SECRET_ACTIONS: Final = frozenset({"secretsmanager:getsecretvalue"})
# Lambda in a VPC manages its network interfaces; EC2 offers no resource-level scope for these.
VPC_ACTIONS: Final = frozenset(
    {
        "ec2:createnetworkinterface",
        "ec2:describenetworkinterfaces",
        "ec2:deletenetworkinterface",
        "ec2:assignprivateipaddresses",
        "ec2:unassignprivateipaddresses",
    }
)
SECRET_PARAMETERS: Final = frozenset({"DatabaseWorkerSecretArn", "AppSecretArn"})
SES_PARAMETERS: Final = frozenset({"SesSenderIdentity", "SesConfigurationSet"})
# Example files carry placeholders; a file meant for a deploy must have none left.
PLACEHOLDER: Final = "REPLACE"
EXAMPLE_SUFFIX: Final = ".example.json"


def _alarm_ids() -> tuple[str, ...]:
    per_worker = ("QueueAgeAlarm", "DlqDepthAlarm", "WorkerErrorsAlarm", "WorkerThrottlesAlarm")
    ids = [
        logical_prefix(w.queue) + suffix for w in WORKERS for suffix in (*per_worker, "WorkerDurationAlarm")
    ]
    return (
        *ids,
        "SesBounceRateAlarm",
        "SesComplaintRateAlarm",
        "DatabaseCpuAlarm",
        "DatabaseFreeStorageAlarm",
        "DatabaseConnectionsAlarm",
        "WebHealthAlarm",
        "StuckCampaignsAlarm",
        "TransactionalLatencyAlarm",
    )


def logical_prefix(queue: str) -> str:
    """`ses-webhooks` → `SesWebhooks`: how the template names a worker's resources."""
    return "".join(part.capitalize() for part in queue.split("-"))


REQUIRED_ALARMS: Final = _alarm_ids()


# --- loading -------------------------------------------------------------------------


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (`!Ref`, `!GetAtt`, `!Sub`, ...) as the long forms."""


def _construct_tag(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _construct_tag)


class InfraError(Exception):
    """A file that cannot be read as a template or a parameter file."""


def load_template(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InfraError(f"{path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, CloudFormationLoader)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InfraError(f"{path}: not a template: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise InfraError(f"{path}: not a template: no Resources")
    return data


# --- reading a template --------------------------------------------------------------


def _sub_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0] if isinstance(sub, list) and sub else None
    return None


def references(value: Any) -> Iterator[str]:
    """Every logical id or parameter a value names (Ref, GetAtt, ${...} in Sub)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str):
                yield inner
            elif key == "Fn::GetAtt":
                yield inner[0] if isinstance(inner, list) else str(inner).split(".", 1)[0]
            elif key == "Fn::Sub":
                text = inner if isinstance(inner, str) else inner[0]
                for name in re.findall(r"\$\{([^!}][^}]*)\}", text):
                    if not name.startswith("AWS::"):
                        yield name.split(".", 1)[0]
                if isinstance(inner, list) and len(inner) > 1:
                    yield from references(inner[1])
            else:
                yield from references(inner)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def _ref(value: Any) -> str | None:
    if isinstance(value, dict):
        if isinstance(value.get("Ref"), str):
            return str(value["Ref"])
        att = value.get("Fn::GetAtt")
        if att is not None:
            return str(att[0] if isinstance(att, list) else str(att).split(".", 1)[0])
    return None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@dataclass
class Template:
    data: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.data["Resources"]  # type: ignore[no-any-return]

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return self.data.get("Parameters") or {}

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if isinstance(v, dict) and v.get("Type") == kind}

    def props(self, logical_id: str) -> dict[str, Any]:
        return self.resources.get(logical_id, {}).get("Properties") or {}

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def number(self, value: Any) -> float | None:
        """A literal number, or the default of the parameter it names."""
        if isinstance(value, dict) and isinstance(value.get("Ref"), str):
            value = self.parameters.get(value["Ref"], {}).get("Default")
        try:
            return float(value)
        except (TypeError, ValueError):
            return None

    def queue_named(self, name: str) -> str | None:
        for logical_id, resource in self.of_type("AWS::SQS::Queue").items():
            text = _sub_text((resource.get("Properties") or {}).get("QueueName"))
            if text is not None and (text == name or text.endswith("-" + name)):
                return logical_id
        return None


# --- template checks -----------------------------------------------------------------


def _check_queue(t: Template, worker: WorkerSpec) -> tuple[str | None, str | None]:
    queue, dlq = t.queue_named(worker.queue), t.queue_named(worker.queue + DLQ_SUFFIX)
    if queue is None:
        t.problem(f"queue {worker.queue}: missing")
        return None, dlq
    props = t.props(queue)
    redrive = props.get("RedrivePolicy")
    if not isinstance(redrive, dict):
        t.problem(f"queue {worker.queue}: no RedrivePolicy (no dead-letter queue)")
    else:
        target = _ref(redrive.get("deadLetterTargetArn"))
        if dlq is None:
            t.problem(f"queue {worker.queue}: its DLQ {worker.queue}{DLQ_SUFFIX} is missing")
        elif target != dlq:
            t.problem(f"queue {worker.queue}: RedrivePolicy does not target {worker.queue}{DLQ_SUFFIX}")
        if "maxReceiveCount" not in redrive:
            t.problem(f"queue {worker.queue}: RedrivePolicy has no maxReceiveCount")
    if t.number(props.get("ReceiveMessageWaitTimeSeconds")) != LONG_POLL_SECONDS:
        t.problem(
            f"queue {worker.queue}: ReceiveMessageWaitTimeSeconds must be {LONG_POLL_SECONDS} (long polling)"
        )
    return queue, dlq


def _check_handler(t: Template, worker: WorkerSpec, handler: Any) -> None:
    module_name, _, attr = str(handler).rpartition(".")
    if not module_name:
        t.problem(f"worker {worker.queue}: handler {handler!r} is not module.function")
        return
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        t.problem(f"worker {worker.queue}: handler module {module_name} cannot be imported")
        return
    if not callable(getattr(module, attr, None)):
        t.problem(f"worker {worker.queue}: handler {handler} is not a function of {module_name}")


def _check_worker(t: Template, worker: WorkerSpec, queue: str) -> tuple[str | None, str | None]:
    """The function fed by the queue and its mapping; returns (function, role) logical ids."""
    mappings = [
        props
        for props in (
            r.get("Properties") or {} for r in t.of_type("AWS::Lambda::EventSourceMapping").values()
        )
        if _ref(props.get("EventSourceArn")) == queue
    ]
    if not mappings:
        t.problem(f"worker {worker.queue}: no event source mapping from its queue")
        return None, None
    mapping = mappings[0]
    if "ReportBatchItemFailures" not in _as_list(mapping.get("FunctionResponseTypes") or []):
        t.problem(
            f"worker {worker.queue}: event source mapping lacks FunctionResponseTypes ReportBatchItemFailures"
        )
    maximum = t.number((mapping.get("ScalingConfig") or {}).get("MaximumConcurrency"))
    if maximum is None or not 2 <= maximum <= 1000:
        t.problem(
            f"worker {worker.queue}: event source mapping needs ScalingConfig MaximumConcurrency (2..1000)"
        )
    function = _ref(mapping.get("FunctionName"))
    if function is None or t.resources.get(function, {}).get("Type") != "AWS::Lambda::Function":
        t.problem(f"worker {worker.queue}: the event source mapping names no function of this template")
        return None, None
    props = t.props(function)
    if props.get("Runtime") != RUNTIME:
        t.problem(f"worker {worker.queue}: Runtime must be {RUNTIME}, not {props.get('Runtime')}")
    if props.get("Architectures") != [ARCHITECTURE]:
        t.problem(f"worker {worker.queue}: Architectures must be [{ARCHITECTURE}]")
    reserved = t.number(props.get("ReservedConcurrentExecutions"))
    if reserved != worker.reserved_concurrency:
        t.problem(
            f"worker {worker.queue}: ReservedConcurrentExecutions must be {worker.reserved_concurrency}, "
            f"not {props.get('ReservedConcurrentExecutions')}"
        )
    _check_handler(t, worker, props.get("Handler"))
    timeout = t.number(props.get("Timeout")) or 3.0
    visibility = t.number(t.props(queue).get("VisibilityTimeout")) or 30.0
    if visibility < VISIBILITY_FACTOR * timeout:
        t.problem(
            f"queue {worker.queue}: VisibilityTimeout {visibility:g} s is under {VISIBILITY_FACTOR}x "
            f"the worker's timeout ({timeout:g} s)"
        )
    return function, _ref(props.get("Role"))


def _statements(role: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for policy in role.get("Policies") or []:
        for statement in _as_list((policy.get("PolicyDocument") or {}).get("Statement") or []):
            if isinstance(statement, dict):
                yield statement


def _check_role(t: Template, worker: WorkerSpec, role: str | None, own: Mapping[str, str | None]) -> None:
    where = f"role of {worker.queue}"
    if role is None or t.resources.get(role, {}).get("Type") != "AWS::IAM::Role":
        t.problem(f"{where}: the function's Role is not a role of this template")
        return
    props = t.props(role)
    if props.get("ManagedPolicyArns"):
        t.problem(f"{where}: managed policies are not scoped to the worker; use inline statements")
    queue_ids = {own["queue"], own["dlq"]} - {None}
    for statement in _statements(props):
        if statement.get("Effect") != "Allow":
            continue
        if "NotAction" in statement or "NotResource" in statement:
            t.problem(f"{where}: NotAction/NotResource grant more than they name")
        actions = [str(a) for a in _as_list(statement.get("Action") or [])]
        resources = _as_list(statement.get("Resource") or [])
        named = set(references(resources))
        for action in actions:
            low = action.lower()
            if "*" in action:
                t.problem(f"{where}: wildcard action {action}")
            elif low in SES_SEND_ACTIONS:
                if not worker.sends_email:
                    t.problem(f"{where}: {action} is for the sending workers only")
                elif "*" in resources or not named <= SES_PARAMETERS:
                    t.problem(f"{where}: {action} must name the sender identity and configuration set")
            elif low in SQS_QUEUE_ACTIONS:
                if "*" in resources or not named or not named <= queue_ids:
                    t.problem(f"{where}: {action} reaches beyond its own queue and DLQ")
            elif low in LOG_ACTIONS:
                if "*" in resources or not named or named != {own["log_group"]}:
                    t.problem(f"{where}: {action} reaches beyond its own log group")
            elif low in SECRET_ACTIONS:
                if "*" in resources or not named or not named <= SECRET_PARAMETERS:
                    t.problem(f"{where}: {action} reaches beyond the database and application secrets")
            elif low not in VPC_ACTIONS:
                t.problem(f"{where}: unexpected action {action}")


def _check_database(t: Template) -> int:
    instances = t.of_type("AWS::RDS::DBInstance")
    if not instances:
        t.problem("database: no AWS::RDS::DBInstance")
    for logical_id, resource in instances.items():
        props = resource.get("Properties") or {}
        if props.get("StorageEncrypted") is not True:
            t.problem(f"database {logical_id}: StorageEncrypted must be true")
        if props.get("PubliclyAccessible") is not False:
            t.problem(f"database {logical_id}: PubliclyAccessible must be false")
        backups = t.number(props.get("BackupRetentionPeriod"))
        if not backups or backups < 1:
            t.problem(f"database {logical_id}: BackupRetentionPeriod must be at least 1 day")
        for policy in ("DeletionPolicy", "UpdateReplacePolicy"):
            if resource.get(policy) != "Snapshot":
                t.problem(f"database {logical_id}: {policy} must be Snapshot")
    return len(instances)


def _check_ses_events(t: Template, webhooks_queue: str | None) -> None:
    if not t.of_type("AWS::SES::ConfigurationSet"):
        t.problem("ses: no configuration set")
    topics = {
        _ref(
            ((r.get("Properties") or {}).get("EventDestination") or {})
            .get("SnsDestination", {})
            .get("TopicARN")
        )
        for r in t.of_type("AWS::SES::ConfigurationSetEventDestination").values()
    } - {None}
    if not topics:
        t.problem("ses: the configuration set publishes no events to SNS")
        return
    subscribed = {
        _ref(p.get("TopicArn"))
        for p in (r.get("Properties") or {} for r in t.of_type("AWS::SNS::Subscription").values())
        if p.get("Protocol") == "sqs"
        and webhooks_queue is not None
        and _ref(p.get("Endpoint")) == webhooks_queue
    }
    if not topics & subscribed:
        t.problem("ses: the events topic is not subscribed to ses-webhooks")
    allowed = False
    for resource in t.of_type("AWS::SQS::QueuePolicy").values():
        props = resource.get("Properties") or {}
        if webhooks_queue not in {_ref(q) for q in _as_list(props.get("Queues") or [])}:
            continue
        for statement in _as_list((props.get("PolicyDocument") or {}).get("Statement") or []):
            actions = {str(a).lower() for a in _as_list(statement.get("Action") or [])}
            if statement.get("Effect") == "Allow" and "sqs:sendmessage" in actions:
                allowed = allowed or bool(set(references(statement.get("Condition") or {})) & topics)
    if not allowed:
        t.problem("ses: no queue policy lets the events topic send to ses-webhooks")


def _check_alarms(t: Template, dlqs: Mapping[str, str | None]) -> int:
    for logical_id in REQUIRED_ALARMS:
        if t.resources.get(logical_id, {}).get("Type") != "AWS::CloudWatch::Alarm":
            t.problem(f"alarm {logical_id}: missing")
    for queue, dlq in dlqs.items():
        alarm = t.props(logical_prefix(queue) + "DlqDepthAlarm")
        if not alarm or dlq is None:
            continue
        dimensions = {_ref(d.get("Value")) for d in alarm.get("Dimensions") or []}
        if (
            dlq not in dimensions
            or t.number(alarm.get("Threshold")) != 0
            or alarm.get("ComparisonOperator") != "GreaterThanThreshold"
        ):
            t.problem(
                f"alarm {logical_prefix(queue)}DlqDepthAlarm: must fire on any message in {queue}{DLQ_SUFFIX}"
            )
    if not t.of_type("AWS::CloudWatch::Dashboard"):
        t.problem("dashboard: missing")
    return len(t.of_type("AWS::CloudWatch::Alarm"))


def check_template(data: dict[str, Any]) -> tuple[list[str], str]:
    """(problems, summary) of a loaded template."""
    t = Template(data)
    roles: dict[str, str] = {}
    dlqs: dict[str, str | None] = {}
    webhooks_queue = None
    for worker in WORKERS:
        queue, dlq = _check_queue(t, worker)
        dlqs[worker.queue] = dlq
        if worker.queue == "ses-webhooks":
            webhooks_queue = queue
        if queue is None:
            continue
        function, role = _check_worker(t, worker, queue)
        if function is None:
            continue
        log_group = _ref((t.props(function).get("LoggingConfig") or {}).get("LogGroup"))
        if log_group is None or t.resources.get(log_group, {}).get("Type") != "AWS::Logs::LogGroup":
            t.problem(f"worker {worker.queue}: LoggingConfig names no log group of this template")
        if role is not None and role in roles.values():
            t.problem(f"worker {worker.queue}: shares its role with another worker")
        if role is not None:
            roles[worker.queue] = role
        _check_role(t, worker, role, {"queue": queue, "dlq": dlq, "log_group": log_group})
    for logical_id, resource in t.of_type("AWS::Logs::LogGroup").items():
        if "RetentionInDays" not in (resource.get("Properties") or {}):
            t.problem(f"log group {logical_id}: no RetentionInDays")
    databases = _check_database(t)
    _check_ses_events(t, webhooks_queue)
    alarms = _check_alarms(t, dlqs)
    summary = (
        f"{len(WORKERS)} queues with DLQs, {len(roles)} workers with their own roles, "
        f"{databases} database, {alarms} alarms"
    )
    return t.problems, summary


# --- parameter files -----------------------------------------------------------------


def _check_value(key: str, value: str, spec: Mapping[str, Any]) -> str | None:
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(a) for a in allowed]:
        return f"{key}={value!r} is not one of {', '.join(str(a) for a in allowed)}"
    pattern = spec.get("AllowedPattern")
    if pattern is not None and not re.fullmatch(str(pattern), value):
        return f"{key}={value!r} does not match {pattern}"
    if "MinLength" in spec and len(value) < int(spec["MinLength"]):
        return f"{key} is shorter than {spec['MinLength']}"
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError:
            return f"{key}={value!r} is not a number"
        if "MinValue" in spec and number < float(spec["MinValue"]):
            return f"{key}={value} is below {spec['MinValue']}"
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            return f"{key}={value} is above {spec['MaxValue']}"
    return None


def check_parameters(template: Mapping[str, Any], path: Path) -> list[str]:
    """Problems of a parameter file (CloudFormation's list of ParameterKey/ParameterValue)."""
    try:
        rows = json.loads(path.read_text())
    except OSError as exc:
        return [f"cannot read: {exc.strerror or exc}"]
    except json.JSONDecodeError as exc:
        return [f"not JSON: {exc.msg} at line {exc.lineno}"]
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and set(r) == {"ParameterKey", "ParameterValue"} for r in rows
    ):
        return ["expected a list of {ParameterKey, ParameterValue} objects"]
    declared: dict[str, dict[str, Any]] = dict(template.get("Parameters") or {})
    problems: list[str] = []
    seen: set[str] = set()
    for row in rows:
        key, value = row["ParameterKey"], row["ParameterValue"]
        if key in seen:
            problems.append(f"parameter {key} given twice")
        seen.add(key)
        if key not in declared:
            problems.append(f"unknown parameter {key} (not in the template)")
        elif not isinstance(value, str):
            problems.append(f"parameter {key}: ParameterValue must be a string")
        elif (bad := _check_value(key, value, declared[key])) is not None:
            problems.append(f"parameter {bad}")
        elif PLACEHOLDER in value and not path.name.endswith(EXAMPLE_SUFFIX):
            problems.append(f"parameter {key} still holds a {PLACEHOLDER} placeholder")
    for key, spec in declared.items():
        if key not in seen:
            kind = "parameter" if "Default" in spec else "required parameter"
            problems.append(f"missing {kind} {key}")
    return problems


@dataclass(frozen=True)
class Report:
    problems: list[str]
    lines: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(template_path: Path, parameter_paths: tuple[Path, ...] | list[Path]) -> Report:
    """Check a template and its parameter files; raises InfraError if the template cannot be read."""
    template = load_template(template_path)
    problems, summary = check_template(template)
    found = [f"{template_path}: {p}" for p in problems]
    lines = [f"{template_path}: {summary}"]
    for path in parameter_paths:
        file_problems = check_parameters(template, path)
        found += [f"{path}: {p}" for p in file_problems]
        lines.append(f"{path}: {len(template.get('Parameters') or {})} parameters")
    return Report(found, lines)
