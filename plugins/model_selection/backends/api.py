"""The SageMaker API shape both backends speak: botocore's errors and its request validation.

Callers tell outcomes apart by `error.response["Error"]["Code"]`, exactly as with a real
boto3 client, so one code path serves the local and the SageMaker backend.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

RESOURCE_IN_USE = "ResourceInUse"
RESOURCE_NOT_FOUND = "ResourceNotFound"
RESOURCE_LIMIT_EXCEEDED = "ResourceLimitExceeded"
VALIDATION = "ValidationException"
THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "ThrottledException", "RequestThrottled", "TooManyRequestsException"}
)


def client_error(code: str, message: str, operation: str, status: int = 400) -> ClientError:
    """The exception botocore raises for an error answer from the service."""
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, operation
    )


def error_code(error: BaseException) -> str | None:
    return error.response.get("Error", {}).get("Code") if isinstance(error, ClientError) else None


@functools.lru_cache(maxsize=1)
def _service_model():
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker")


def request_problems(operation: str, params: Mapping[str, Any]) -> list[str]:
    """Everything botocore's own SageMaker model finds wrong with a request, plus name patterns."""
    from botocore.validate import ParamValidator

    model = _service_model()
    shape = model.operation_model(operation).input_shape
    report = ParamValidator().validate(dict(params), shape)
    problems = [line.strip() for line in report.generate_report().splitlines() if line.strip()]
    for member_name, member in shape.members.items():
        value = params.get(member_name)
        pattern = member.metadata.get("pattern")
        if isinstance(value, str) and pattern:
            maximum = member.metadata.get("max")
            if not re.fullmatch(pattern, value) or (maximum is not None and len(value) > maximum):
                problems.append(f"{member_name} {value!r} must match {pattern} and be at most {maximum} characters")
    return problems


def validate_request(operation: str, params: Mapping[str, Any]) -> None:
    """Raise SageMaker's ValidationException naming every problem, as the service would."""
    problems = request_problems(operation, params)
    if problems:
        raise client_error(VALIDATION, "; ".join(problems), operation)
