"""NGSI-LD ProblemDetails (RFC 7807) errors raised anywhere in the platform."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NGSI_ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CIVICA_ERRORS = "https://civica.city/problems/"


@dataclass(frozen=True)
class ProblemKind:
    """One kind of error: its type URI, title and HTTP status."""

    name: str
    status: int
    namespace: str = NGSI_ERRORS

    @property
    def type_uri(self) -> str:
        return self.namespace + self.name


# The NGSI-LD error types (ETSI GS CIM 009, 5.5.2) plus Civica's own for HTTP concerns the
# spec leaves open (authentication, body size, privacy refusals).
INVALID_REQUEST = ProblemKind("InvalidRequest", 400)
BAD_REQUEST_DATA = ProblemKind("BadRequestData", 400)
ALREADY_EXISTS = ProblemKind("AlreadyExists", 409)
OPERATION_NOT_SUPPORTED = ProblemKind("OperationNotSupported", 422)
RESOURCE_NOT_FOUND = ProblemKind("ResourceNotFound", 404)
INTERNAL_ERROR = ProblemKind("InternalError", 500)
TOO_COMPLEX_QUERY = ProblemKind("TooComplexQuery", 403)
TOO_MANY_RESULTS = ProblemKind("TooManyResults", 403)
LD_CONTEXT_NOT_AVAILABLE = ProblemKind("LdContextNotAvailable", 503)
NONEXISTENT_TENANT = ProblemKind("NonexistentTenant", 404)
UNAUTHORIZED = ProblemKind("Unauthorized", 401, CIVICA_ERRORS)
FORBIDDEN = ProblemKind("Forbidden", 403, CIVICA_ERRORS)
PAYLOAD_TOO_LARGE = ProblemKind("PayloadTooLarge", 413, CIVICA_ERRORS)
UNSUPPORTED_MEDIA_TYPE = ProblemKind("UnsupportedMediaType", 415, CIVICA_ERRORS)
NOT_ACCEPTABLE = ProblemKind("NotAcceptable", 406, CIVICA_ERRORS)
PRIVACY_VIOLATION = ProblemKind("PrivacyViolation", 400, CIVICA_ERRORS)
WRITE_NOT_STORED = ProblemKind("WriteNotStored", 503, CIVICA_ERRORS)


class Problem(Exception):  # noqa: N818 - named after RFC 9457 problem details
    """An error that becomes a ProblemDetails body (HTTP) or a dead-letter reason (MQTT)."""

    def __init__(
        self, kind: ProblemKind, detail: str, *, title: str | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.title = title or kind.name
        self.extra = extra

    @property
    def status(self) -> int:
        return self.kind.status

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.kind.type_uri,
            "title": self.title,
            "status": self.kind.status,
            "detail": self.detail,
        }
        body.update(self.extra)
        return body


def bad_request(detail: str, **extra: Any) -> Problem:
    return Problem(BAD_REQUEST_DATA, detail, **extra)


def invalid_request(detail: str, **extra: Any) -> Problem:
    return Problem(INVALID_REQUEST, detail, **extra)


def not_found(detail: str, **extra: Any) -> Problem:
    return Problem(RESOURCE_NOT_FOUND, detail, **extra)
