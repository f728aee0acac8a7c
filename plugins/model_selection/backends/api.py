"""The SageMaker API shape both backends speak: botocore's errors and its request validation.

Callers tell outcomes apart by `error.response["Error"]["Code"]`, exactly as with a real
boto3 client, so one code path serves the local and the SageMaker backend.

`request_problems` holds a request to SageMaker's whole service model, as botocore ships
it: botocore's own validator checks types, required members and minimums only; the
maxima, patterns and enums are enforced by SageMaker on the server (and by no fake of it),
so they are checked here, together with the few limits the model states only in words.

`validate_request` is the one check both backends run, on every operation, before a request
goes anywhere: every botocore client the SageMaker hook makes runs it before botocore sends
(`hold_to_service_model`); the local hook runs it on every call to the local client (which
checks each create itself too), `file://` URIs standing for S3 ones. A refusal is
`RequestRefused`, naming the operation and each problem. With MODEL_SELECTION_CHECKED_REQUESTS
set to a file, each check also appends one JSON line (pid, operation, problems) to it: the tests
set it for `airflow dags test`, whose processes they cannot hook, and read it afterwards.
"""

from __future__ import annotations

import decimal
import functools
import json
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
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


def member_limit(structure: str, member: str, limit: str = "max") -> int | None:
    """A limit of one member's shape in SageMaker's model, e.g. ("HyperParameterAlgorithmSpecification",
    "MetricDefinitions") -> 40."""
    return _service_model().shape_for(structure).members[member].metadata.get(limit)


# -- Java patterns in Python ------------------------------------------------------------------
# The model's patterns are Java regexes, matched against the whole value. Python's `re` reads
# most of them as they are; what it does not read is translated here:
#   - \p{L}, \p{Z}, \p{N}, \p{M}, \p{S}, \p{P}... (Unicode general categories, e.g. in TagKey and
#     TagValue) become explicit code-point ranges built from `unicodedata`;
#   - \p{Alnum}, \p{Alpha}, ... (POSIX classes, ASCII-only in Java by default, e.g. in
#     TrainingRepositoryCredentialsProviderArn) become their ASCII ranges;
#   - a UTF-16 surrogate pair such as \uD800\uDC00 (TableName) becomes the code point it encodes;
#   - `$` with a quantifier, e.g. `${1,128}` (CustomerMetadataKey), is `$` (an end is an end);
#   - `.` is Java's: any character but the line terminators \n \r \u0085 \u2028 \u2029;
#   - \d \w \s \b are ASCII-only, as in Java by default (re.ASCII).
# Anything else Java-only (nested classes, `&&`, \P inside a class) raises ValueError, so a
# botocore update that brings one in fails loudly (tests/test_contract.py compiles every pattern
# of the model) instead of being skipped. Lengths are counted in code points (Python's len).
_POSIX = {
    "Lower": "a-z", "Upper": "A-Z", "ASCII": "\\x00-\\x7f", "Alpha": "a-zA-Z", "Digit": "0-9",
    "Alnum": "a-zA-Z0-9", "Punct": "!-/:-@\\[-`{-~", "Graph": "!-~", "Print": " -~", "Blank": " \\t",
    "Cntrl": "\\x00-\\x1f\\x7f", "XDigit": "0-9a-fA-F", "Space": " \\t\\n\\x0b\\f\\r",
}
_JAVA_DOT = "[^\\n\\r\\u0085\\u2028\\u2029]"


@functools.lru_cache(maxsize=1)
def _category_ranges() -> dict[str, str]:
    """Every Unicode general category (two letters, and its first letter) as `re` class ranges."""
    spans: dict[str, list[list[int]]] = {}
    for code in range(0x110000):
        category = unicodedata.category(chr(code))
        for key in (category, category[0]):
            ranges = spans.setdefault(key, [])
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return {key: "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
            for key, ranges in spans.items()}


def _property_class(name: str) -> str:
    """The class contents (no brackets) of Java's \\p{name}."""
    name = name[2:] if name.startswith("Is") and name[2:] in _category_ranges() else name
    if name in _POSIX:
        return _POSIX[name]
    if name in _category_ranges():
        return _category_ranges()[name]
    raise ValueError(f"Java character property \\p{{{name}}} has no translation")


def python_pattern(java: str) -> str:
    """Java regex -> the equivalent Python `re` pattern (see the notes above)."""
    out: list[str] = []
    in_class = False
    class_start = 0
    i = 0
    while i < len(java):
        char = java[i]
        if char == "\\":
            if i + 1 >= len(java):
                raise ValueError(f"pattern {java!r} ends with a backslash")
            nxt = java[i + 1]
            if nxt in "pP":
                if java[i + 2 : i + 3] == "{":
                    end = java.index("}", i + 2)
                    name, i = java[i + 3 : end], end + 1
                else:
                    name, i = java[i + 2], i + 3
                contents = _property_class(name)
                if in_class and nxt == "P":
                    raise ValueError(f"pattern {java!r}: \\P inside a class has no translation")
                out.append(contents if in_class else f"[{'^' if nxt == 'P' else ''}{contents}]")
                continue
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", java[i + 2 : i + 6]):
                code = int(java[i + 2 : i + 6], 16)
                low = re.match(r"\\u([dD][c-fC-F][0-9a-fA-F]{2})", java[i + 6 : i + 12])
                if 0xD800 <= code <= 0xDBFF and low:
                    code = 0x10000 + ((code - 0xD800) << 10) + (int(low.group(1), 16) - 0xDC00)
                    i += 12
                else:
                    i += 6
                out.append(f"\\U{code:08x}")
                continue
            out.append(java[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "[" or java.startswith("&&", i):
                raise ValueError(f"pattern {java!r}: nested or intersected classes have no translation")
            if char == "]" and i > class_start:
                in_class = False
            out.append(char)
            i += 1
            continue
        if char == "[":
            in_class = True
            class_start = i + 1 + (java[i + 1 : i + 2] == "^")  # a `]` right after `[` or `[^` is literal
            out.append(java[i : class_start])
            i = class_start
            continue
        if char == ".":
            out.append(_JAVA_DOT)
        elif char == "$" and (quantifier := re.match(r"\{(\d+)(,\d*)?\}|[*+?]", java[i + 1 :])):
            optional = quantifier.group(0) in ("*", "?") or quantifier.group(1) == "0"
            out.append("(?:$)?" if optional else "$")
            i += len(quantifier.group(0))
        else:
            out.append(char)
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=None)
def compiled_pattern(java: str) -> re.Pattern[str]:
    """The model's pattern, compiled once per process."""
    return re.compile(python_pattern(java), re.ASCII)


# -- the walk ---------------------------------------------------------------------------------
_NUMBERS = ("integer", "long", "float", "double")


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(value)} characters)" if isinstance(value, str) else f"{text[:limit]}..."


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _count(size: int, shape: Any, path: str, unit: str, problems: list[str], check_min: bool) -> None:
    maximum, minimum = shape.metadata.get("max"), shape.metadata.get("min")
    if maximum is not None and size > maximum:
        problems.append(f"{path}: {size} {unit}, at most {maximum} allowed")
    if check_min and minimum is not None and size < minimum:
        problems.append(f"{path}: {size} {unit}, at least {minimum} needed")


def _walk(value: Any, shape: Any, path: str, problems: list[str], local_uris: bool) -> None:
    """What botocore's ParamValidator leaves out (maxima, patterns, enums, map and blob minimums)."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, Mapping):
            return
        for name, member_value in value.items():
            member = shape.members.get(name)
            if member is not None:
                _walk(member_value, member, _join(path, name), problems, local_uris)
        rule = _SHAPE_RULES.get(shape.name)
        if rule is not None:
            problems.extend(rule(value, path))
    elif kind == "list":
        if not isinstance(value, (list, tuple)):
            return
        _count(len(value), shape, path, "items", problems, check_min=False)  # botocore checks the minimum
        for index, item in enumerate(value):
            _walk(item, shape.member, f"{path}[{index}]", problems, local_uris)
    elif kind == "map":
        if not isinstance(value, Mapping):
            return
        _count(len(value), shape, path, "entries", problems, check_min=True)  # botocore checks neither
        for key, item in value.items():
            _walk(key, shape.key, f"{path} key {_show(key)}", problems, local_uris)
            _walk(item, shape.value, _join(path, str(key)), problems, local_uris)
    elif kind == "string":
        if not isinstance(value, str):
            return
        maximum = shape.metadata.get("max")
        if maximum is not None and len(value) > maximum:
            problems.append(f"{path}: {len(value)} characters, at most {maximum} allowed")
        if shape.enum and value not in shape.enum:
            problems.append(f"{path}: {_show(value)} is not one of {', '.join(shape.enum)}")
        pattern = shape.metadata.get("pattern")
        if pattern and not compiled_pattern(pattern).fullmatch(value):
            if not (local_uris and shape.name == "S3Uri" and value.startswith("file://")):
                problems.append(f"{path}: {_show(value)} does not match the pattern {pattern}")
    elif kind == "blob":
        if not isinstance(value, (bytes, bytearray, str)):
            return
        _count(len(value), shape, path, "bytes", problems, check_min=True)
    elif kind in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
            return
        maximum = shape.metadata.get("max")
        if maximum is not None and value > maximum:
            problems.append(f"{path}: {value}, at most {maximum} allowed")  # botocore checks the minimum


# -- limits the model states only in its documentation strings --------------------------------
# (The 30 values of one CategoricalParameterRange are no such rule: its Values is a
# ParameterValues list with max 30, checked by the walk; MetricDefinitions likewise, max 40.)
def _range_count(ranges: Mapping[str, Any]) -> int:
    lists = (ranges.get(kind) for kind in ("CategoricalParameterRanges", "ContinuousParameterRanges",
                                           "IntegerParameterRanges"))
    return sum(len(value) for value in lists if isinstance(value, (list, tuple)))  # a wrong type: botocore says so


def _range_cap() -> int:
    return min(member_limit("ParameterRanges", kind) for kind in ("CategoricalParameterRanges",
                                                                  "ContinuousParameterRanges", "IntegerParameterRanges"))


def _parameter_ranges_rule(ranges: Mapping[str, Any], path: str) -> list[str]:
    # ParameterRanges: "the sum of the number of hyperparameters for all the ranges can't exceed
    # the maximum number specified" (the Array Members' max, 30).
    total, cap = _range_count(ranges), _range_cap()
    return [f"{path}: {total} hyperparameter ranges in all, at most {cap} allowed"] if total > cap else []


_MAX_RUNTIME_SECONDS = 28 * 24 * 3600


def _stopping_condition_rule(condition: Mapping[str, Any], path: str) -> list[str]:
    problems = []
    runtime, wait = condition.get("MaxRuntimeInSeconds"), condition.get("MaxWaitTimeInSeconds")
    # StoppingCondition.MaxRuntimeInSeconds: "The maximum value is 28 days."
    if isinstance(runtime, int) and runtime > _MAX_RUNTIME_SECONDS:
        problems.append(f"{_join(path, 'MaxRuntimeInSeconds')}: {runtime}, at most {_MAX_RUNTIME_SECONDS} (28 days) allowed")
    # StoppingCondition.MaxWaitTimeInSeconds: "It must be equal to or greater than MaxRuntimeInSeconds."
    if isinstance(runtime, int) and isinstance(wait, int) and wait < runtime:
        problems.append(f"{_join(path, 'MaxWaitTimeInSeconds')}: {wait}, at least MaxRuntimeInSeconds ({runtime}) needed")
    return problems


def _hyperband_rule(config: Mapping[str, Any], path: str) -> list[str]:
    # HyperbandStrategyConfig.MaxResource: "The maximum value is 20,000 epochs."
    value = config.get("MaxResource")
    if isinstance(value, int) and value > 20_000:
        return [f"{_join(path, 'MaxResource')}: {value}, at most 20000 allowed"]
    return []


_SHAPE_RULES: dict[str, Callable[[Mapping[str, Any], str], list[str]]] = {
    "ParameterRanges": _parameter_ranges_rule,
    "StoppingCondition": _stopping_condition_rule,
    "HyperbandStrategyConfig": _hyperband_rule,
}


def _tuning_job_rules(params: Mapping[str, Any]) -> list[str]:
    """Sums over the whole tuning job (its config and every training-job definition)."""
    problems = []
    definitions = [d for d in [params.get("TrainingJobDefinition"), *(params.get("TrainingJobDefinitions") or ())]
                   if isinstance(d, Mapping)]
    config = params.get("HyperParameterTuningJobConfig")
    ranges = [config.get("ParameterRanges") if isinstance(config, Mapping) else None]
    ranges += [d.get("HyperParameterRanges") for d in definitions]
    ranges = [r for r in ranges if isinstance(r, Mapping) and _range_count(r)]
    # ParameterRanges: the maximum is "also the maximum for the hyperparameter tuning job itself"
    # (each set alone is checked by _parameter_ranges_rule).
    total, cap = sum(_range_count(r) for r in ranges), _range_cap()
    if len(ranges) > 1 and total > cap:
        problems.append(f"HyperParameterTuningJobConfig.ParameterRanges and TrainingJobDefinitions[*].HyperParameterRanges: "
                        f"{total} hyperparameter ranges in all, at most {cap} allowed")
    # HyperParameterTrainingJobDefinition.Environment: "the sum of the number of environment variables
    # for all the training job definitions can't exceed the maximum number specified" (48).
    environment = sum(len(d.get("Environment") or {}) for d in definitions)
    env_cap = member_limit("HyperParameterTrainingJobDefinition", "Environment")
    if len(definitions) > 1 and environment > env_cap:
        problems.append(f"TrainingJobDefinition and TrainingJobDefinitions[*].Environment: {environment} variables "
                        f"in all, at most {env_cap} allowed")
    return problems


_OPERATION_RULES: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "CreateHyperParameterTuningJob": _tuning_job_rules,
}


def request_problems(operation: str, params: Mapping[str, Any], *, local_uris: bool = False) -> list[str]:
    """Everything SageMaker's service model finds wrong with a request, each naming its field.

    botocore's ParamValidator report (types, required members, minimums), then every maximum
    (string and blob lengths, list and map sizes, numbers), pattern and enum of the input shape,
    nested shapes included, then the limits the model documents only in words (see above).
    `local_uris` lets `file://` URIs stand where SageMaker takes S3 URIs: the local backend reads
    its data and writes its jobs there; SageMaker itself would refuse them.
    """
    from botocore.validate import ParamValidator

    shape = _service_model().operation_model(operation).input_shape
    report = ParamValidator().validate(dict(params), shape)
    problems = [line.strip() for line in report.generate_report().splitlines() if line.strip()]
    _walk(params, shape, "", problems, local_uris)
    rule = _OPERATION_RULES.get(operation)
    if rule is not None:
        problems.extend(rule(params))
    return problems


# A file (JSON lines) that every check appends to, when set: how tests see the checks made in
# processes they did not start themselves (`airflow dags test`).
CHECKED_REQUESTS_LOG = "MODEL_SELECTION_CHECKED_REQUESTS"


class RequestRefused(ClientError):
    """A request SageMaker's service model refuses, found before it was sent (or, locally, run).

    It is the ValidationException the service would answer (a ClientError with that code, so
    callers that act on codes treat both backends alike), but its message is ours: the
    operation and every problem, each naming its field.
    """

    MSG_TEMPLATE = "{error_message}"

    def __init__(self, operation: str, problems: list[str]):
        self.problems = list(problems)
        message = f"SageMaker would refuse this {operation} request: " + "; ".join(self.problems)
        super().__init__({"Error": {"Code": VALIDATION, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                         operation)

    def __reduce__(self):
        return self.__class__, (self.operation_name, self.problems)


def _record(operation: str, problems: list[str]) -> None:
    path = os.environ.get(CHECKED_REQUESTS_LOG)
    if not path:
        return
    line = json.dumps({"pid": os.getpid(), "operation": operation, "problems": problems}) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(descriptor, line.encode())  # one append per line: processes writing at once do not interleave
    finally:
        os.close(descriptor)


def validate_request(operation: str, params: Mapping[str, Any], *, local_uris: bool = False) -> None:
    """Raise RequestRefused (SageMaker's ValidationException) naming every problem `request_problems` finds."""
    problems = request_problems(operation, params, local_uris=local_uris)
    _record(operation, problems)
    if problems:
        raise RequestRefused(operation, problems)


@functools.lru_cache(maxsize=1)
def _operations_by_method() -> dict[str, str]:
    from botocore import xform_name

    return {xform_name(operation): operation for operation in _service_model().operation_names}


def operation_for_method(method: str) -> str | None:
    """boto3's method name -> SageMaker's operation ("describe_training_job" -> "DescribeTrainingJob")."""
    return _operations_by_method().get(method)


def _check_before_sending(params: Mapping[str, Any], model: Any, **kwargs: Any) -> None:
    validate_request(model.name, params)


def hold_to_service_model(client: Any) -> Any:
    """Check every SageMaker request this botocore client makes, before it is sent; returns the client.

    The check runs last among `before-parameter-build` handlers, when the parameters are final
    and before botocore's own validation and serialization, so a refused request never leaves
    this process and its error names every problem (botocore's own ones too) at once.
    aiobotocore hands out a context that makes its client on entry: that client is held then.
    """
    if not hasattr(client, "meta"):
        return _HeldOnEntry(client)
    client.meta.events.register_last("before-parameter-build.sagemaker", _check_before_sending,
                                     unique_id="model_selection.service_model_check")
    return client


class _HeldOnEntry:
    """aiobotocore's client context, whose client is held to the service model when it is entered."""

    def __init__(self, context: Any):
        self._context = context

    async def __aenter__(self) -> Any:
        return hold_to_service_model(await self._context.__aenter__())

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._context.__aexit__(*exc_info)
