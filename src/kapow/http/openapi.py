"""The OpenAPI 3 document of the HTTP API, written by hand: it is short, and it is the API's documentation."""

from __future__ import annotations

from typing import Any

from kapow import __version__

_ERROR = {"$ref": "#/components/responses/Error"}
_UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}
_FORBIDDEN = {"$ref": "#/components/responses/Forbidden"}
_UNAVAILABLE = {"$ref": "#/components/responses/Unavailable"}
_ID_PATTERN = "^[0-9]{1,10}:[0-9]{1,19}$"
# A time bound: relative (15m, 2h, 1d ago), an RFC 3339 date-time, or empty (no bound).
RELATIVE_PATTERN = "^[0-9]{1,6}[smhd]$"
_TIME = {"anyOf": [{"type": "string", "pattern": RELATIVE_PATTERN}, {"type": "string", "format": "date-time"},
                   {"type": "string", "maxLength": 0}]}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_FILTERS = [
    _query("code", {"type": "string", "maxLength": 64}, "only records with this error code"),
    _query("destination", {"type": "string", "maxLength": 200},
           "only this destination: a listed label (vanity/database/schema.table) selects exactly it, "
           "vanity/database/ a database, vanity/ a vanity (whole names, never a substring)"),
    _query("since", _TIME, "failed at or after (ISO 8601, or 15m / 2h / 1d ago)"),
    _query("until", _TIME, "failed at or before (ISO 8601, or 15m / 2h / 1d ago)"),
]
_RECORD_ID = {"name": "id", "in": "path", "required": True, "description": "record id, partition:offset",
              "schema": {"type": "string", "pattern": _ID_PATTERN}}
_SECURE: list[dict[str, list[str]]] = [{"bearer": []}]

_NULLABLE_STRING = {"type": "string", "nullable": True}
_SOURCE = {"type": "object", "required": ["topic", "partition", "offset", "timestamp_ms"],
           "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"},
                          "offset": {"type": "integer"}, "timestamp_ms": {"type": "integer"}}}
_SUMMARY_PROPS: dict[str, Any] = {
    "id": {"type": "string", "pattern": _ID_PATTERN},
    "partition": {"type": "integer"},
    "offset": {"type": "integer"},
    "code": {"type": "string", "description": "stable error code (docs/errors.md)"},
    "class": {"type": "string", "description": "user or system"},
    "message": {"type": "string"},
    "destination": {"type": "object", "nullable": True, "description": "the failed destination as the packet gave it"},
    "destination_label": {"type": "string", "description": "vanity/database/schema.table ('' for a whole packet)"},
    "source": _SOURCE,
    "origin": {"type": "string", "description": "topic/partition/offset of the original source record"},
    "attempt": {"type": "integer", "minimum": 1},
    "failed_at": {"type": "string"},
    "failed_at_ms": {"type": "integer"},
}
_SUMMARY_REQUIRED = ["id", "partition", "offset", "code", "class", "message", "destination", "destination_label",
                     "source", "origin", "attempt", "failed_at", "failed_at_ms"]
_NUMBER_OR_NULL = {"type": "number", "nullable": True}
_SERIES = {"type": "array", "items": _NUMBER_OR_NULL}
_OUTCOMES = ("landed", "duplicate", "filtered", "user_error", "system_error")
OFFSETS_PATTERN = r"^[0-9]{1,6}:[0-9]{1,19}(,[0-9]{1,6}:[0-9]{1,19}){0,999}$"
_CATEGORIES = ("filtered", "landed", "user_errors", "parked", "purged", "pending", "missing")
_COUNT = {"type": "integer", "minimum": 0}
_AUDIT = {
    "type": "object",
    "required": ["total", *_CATEGORIES, "unverified", "group", "elapsed_s", "missing_examples", "partitions"],
    "properties": {
        "total": _COUNT, **dict.fromkeys(_CATEGORIES, _COUNT),
        "unverified": {"type": "integer", "minimum": 0,
                       "description": "landed records whose table gives no unique key to find the row by"},
        "group": {"type": "string"}, "elapsed_s": {"type": "number"},
        "phases": {"type": "object", "additionalProperties": {"type": "number"},
                   "description": "seconds spent reading error topics, source topics, joining, checking rows"},
        "missing_examples": {"type": "array", "items": {
            "type": "object", "required": ["topic", "partition", "offset", "why"],
            "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"},
                           "offset": {"type": "integer"}, "why": {"type": "string"}}}},
        "partitions": {"type": "array", "items": {
            "type": "object", "required": ["topic", "partition", "start", "end", "committed", "total", *_CATEGORIES],
            "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"},
                           "start": {"type": "integer"}, "end": {"type": "integer"},
                           "committed": {"type": "integer", "description": "-1: nothing committed"},
                           "total": _COUNT, **dict.fromkeys(_CATEGORIES, _COUNT), "unverified": _COUNT}}},
    },
}


def openapi_document() -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string", "description": "one line"}}},
        "DlqSummary": {"type": "object", "required": [*_SUMMARY_REQUIRED, "size", "value_preview"],
                       "properties": {**_SUMMARY_PROPS, "size": {"type": "integer", "minimum": 0},
                                      "value_preview": {"type": "string"}}},
        "Record": {"type": "object", "required": [*_SUMMARY_REQUIRED, "key", "value", "headers", "size", "truncated",
                                                  "key_truncated", "headers_truncated"],
                   "properties": {**_SUMMARY_PROPS, "key": _NULLABLE_STRING, "value": _NULLABLE_STRING,
                                  "headers": {"type": "object", "additionalProperties": _NULLABLE_STRING},
                                  "size": {"type": "integer", "minimum": 0, "description": "value bytes"},
                                  "truncated": {"type": "boolean",
                                                "description": "value cut (user errors: at 16 KiB)"},
                                  "key_truncated": {"type": "boolean",
                                                    "description": "key cut (user errors: at 1 KiB)"},
                                  "key_size": {"type": "integer", "minimum": 0,
                                               "description": "the key's bytes, when it was cut"},
                                  "headers_truncated": {"type": "boolean",
                                                        "description": "a header cut at 1 KiB, or headers dropped "
                                                                       "past 16 KiB in all (user errors)"},
                                  "headers_size": {"type": "integer", "minimum": 0,
                                                   "description": "the bytes of every header name and value, when "
                                                                  "any was cut"}}},
        "DlqList": {
            "type": "object",
            "required": ["topic", "order", "total", "parked", "limit", "offset", "next_after", "records", "facets"],
            "properties": {
                "topic": {"type": "string"},
                "order": {"type": "string", "enum": ["oldest first"]},
                "after": _NULLABLE_STRING,
                "next_after": {"type": "string", "nullable": True,
                               "description": "pass as after for the next page; null on the last page"},
                "total": {"type": "integer", "description": "records matching the filter"},
                "parked": {"type": "integer", "description": "records parked in all"},
                "limit": {"type": "integer"}, "offset": {"type": "integer"},
                "records": {"type": "array", "items": _ref("DlqSummary")},
                "facets": {"type": "object", "properties": {
                    "codes": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "destinations": {"type": "object", "additionalProperties": {"type": "integer"}}}},
            },
        },
        "Selection": {
            "type": "object", "additionalProperties": False,
            "description": "Name record ids, a filter, or all: true (as kapow dlq reschedule|purge).",
            "anyOf": [{"required": ["ids"], "properties": {"ids": {"minItems": 1}}},
                      *({"required": [k], "properties": {k: {"minLength": 1}}}
                        for k in ("code", "destination", "since", "until")),
                      {"required": ["all"], "properties": {"all": {"enum": [True]}}}],
            "properties": {
                "ids": {"type": "array", "maxItems": 10000, "items": {"type": "string", "pattern": _ID_PATTERN}},
                "code": {"type": "string", "maxLength": 64},
                "destination": {"type": "string", "maxLength": 200},
                "since": _TIME, "until": _TIME,
                "all": {"type": "boolean"},
            },
        },
        "Done": {"type": "object", "required": ["action", "count", "ids"],
                 "properties": {"action": {"type": "string", "enum": ["rescheduled", "purged"]},
                                "count": {"type": "integer", "minimum": 0},
                                "ids": {"type": "array", "items": {"type": "string"},
                                        "description": "the first 1000 ids acted on"},
                                "skipped": {"type": "array", "items": {"type": "string"},
                                            "description": "not rescheduled: no kapow-source-topic, or a value cut "
                                                           "to fit the error topic (kapow-value-truncated)"}}},
        "Audit": _AUDIT,
        "UserErrors": {"type": "object", "required": ["topic", "total", "limit", "records"],
                       "properties": {"topic": {"type": "string"}, "total": {"type": "integer"},
                                      "limit": {"type": "integer"},
                                      "records": {"type": "array", "items": _ref("Record")}}},
        "Destination": {"type": "object", "required": ["vanity", "database", "circuit"],
                        "properties": {"vanity": {"type": "string"}, "database": {"type": "string"},
                                       "circuit": {"type": "string", "enum": ["closed", "half_open", "open"]},
                                       "host": {"type": "string"}, "port": {"type": "integer"},
                                       "pool_in_use": {"type": "integer"},
                                       "max_connections": {"type": "integer"}}},
        "Stats": {
            "type": "object",
            "required": ["now_ms", "uptime_s", "ready", "partitions", "totals", "current", "series",
                         "destinations", "topics"],
            "properties": {
                "now_ms": {"type": "integer"}, "started_at_ms": {"type": "integer"},
                "uptime_s": {"type": "number"}, "ready": {"type": "boolean"},
                "partitions": {"type": "integer"}, "group": {"type": "string"},
                "totals": {"type": "object", "additionalProperties": {"type": "integer"},
                           "description": "since start: received, filtered, landed, duplicate, user_error, "
                                          "system_error"},
                "current": {"type": "object", "description": "over the last 5 seconds", "properties": {
                    "packets_per_s": {"type": "object", "additionalProperties": {"type": "number"}},
                    "error_pct": _NUMBER_OR_NULL, "latency_p50_s": _NUMBER_OR_NULL,
                    "latency_p99_s": _NUMBER_OR_NULL, "lag": {"type": "number"}, "in_flight": {"type": "number"}}},
                "series": {"type": "object", "description": "one point a second, oldest first",
                           "properties": {"t": {"type": "array", "items": {"type": "integer"}},
                                          **{k: _SERIES for k in (*_OUTCOMES, "error_pct", "p50", "p99", "lag")}}},
                "destinations": {"type": "array", "items": _ref("Destination")},
                "topics": {"type": "object", "properties": {
                    "source": {"type": "array", "items": {"type": "string"}},
                    "user_errors": {"type": "string"}, "system_errors": {"type": "string"}}},
            },
        },
        "Health": {"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string", "enum": ["ok", "stalled"]},
                                  "uptime_s": {"type": "number"}, "loop_silent_s": {"type": "number"},
                                  "reason": {"type": "string"}}},
        "Ready": {"type": "object", "required": ["ready", "partitions", "destinations"],
                  "properties": {"ready": {"type": "boolean"}, "partitions": {"type": "integer"},
                                 "destinations": {"type": "array", "items": _ref("Destination")}}},
    }
    mutation = {
        "200": _json(_ref("Done"), "done: each record acknowledged on its way, then marked handled"),
        "400": _ERROR, "401": _UNAUTHORIZED, "403": _FORBIDDEN, "404": _ERROR, "409": _ERROR, "503": _UNAVAILABLE,
    }
    paths: dict[str, Any] = {
        "/healthz": {"get": {"summary": "Liveness: the consumer loop is turning and commits are not stuck",
                             "operationId": "healthz",
                             "responses": {"200": _json(_ref("Health"), "alive"),
                                           "503": _json(_ref("Health"), "the loop has stalled, or no commit for "
                                                                        "longer than the pipeline ever waits")}}},
        "/readyz": {"get": {"summary": "Readiness: partitions assigned; circuit state per destination",
                            "operationId": "readyz",
                            "responses": {"200": _json(_ref("Ready"), "ready"),
                                          "503": _json(_ref("Ready"), "no partitions assigned (yet)")}}},
        "/metrics": {"get": {"summary": "Prometheus exposition", "operationId": "metrics",
                             "responses": {"200": {"description": "metrics",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/api/stats": {"get": {
            "summary": "Totals, current rates, latency quantiles and lag, with one point a second of history",
            "operationId": "stats", "security": _SECURE,
            "parameters": [_query("seconds", {"type": "integer", "minimum": 1, "maximum": 300},
                                  "history to return (default 300)")],
            "responses": {"200": _json(_ref("Stats"), "stats"), "400": _ERROR, "401": _UNAUTHORIZED}}},
        "/api/dlq": {"get": {
            "summary": "Parked records (system errors), oldest first (by failure time, then partition and offset)",
            "description": "One order everywhere (kapow dlq list, the console). A page ends with next_after: pass "
                           "it as after to read the next page.",
            "operationId": "dlqList", "security": _SECURE,
            "parameters": [*_FILTERS,
                           _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "page size (100)"),
                           _query("offset", {"type": "integer", "minimum": 0, "maximum": 100000000},
                                  "skip this many matching records (after the cursor, if any)"),
                           _query("after", {"type": "string", "pattern": _ID_PATTERN},
                                  "start after this record id (the next_after of the previous page)")],
            "responses": {"200": _json(_ref("DlqList"), "a page of records"), "400": _ERROR,
                          "401": _UNAUTHORIZED, "404": _json(_ref("Error"), "after names no record of the queue"),
                          "503": _UNAVAILABLE}}},
        "/api/dlq/{id}": {"get": {
            "summary": "One parked record in full: key, value, headers, metadata", "operationId": "dlqShow",
            "security": _SECURE, "parameters": [_RECORD_ID],
            "responses": {"200": _json(_ref("Record"), "the record"), "400": _ERROR, "401": _UNAUTHORIZED,
                          "404": _ERROR, "503": _UNAVAILABLE}}},
        "/api/dlq/{id}/reschedule": {"post": {
            "summary": "Republish one record to its source topic, then mark it handled",
            "operationId": "dlqRescheduleOne", "security": _SECURE, "parameters": [_RECORD_ID],
            "responses": mutation}},
        "/api/dlq/{id}/purge": {"post": {
            "summary": "Drop one record from the queue", "operationId": "dlqPurgeOne", "security": _SECURE,
            "parameters": [_RECORD_ID], "responses": mutation}},
        "/api/dlq/reschedule": {"post": {
            "summary": "Republish the named or matching records (or all) to their source topics",
            "operationId": "dlqReschedule", "security": _SECURE,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Selection")}}},
            "responses": mutation}},
        "/api/dlq/purge": {"post": {
            "summary": "Drop the named or matching records (or all)", "operationId": "dlqPurge",
            "security": _SECURE,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Selection")}}},
            "responses": mutation}},
        "/api/audit": {"get": {
            "summary": "Did everything land? Every record of the input topics in exactly one category",
            "description": "As kapow audit: landed, filtered, user_errors, parked, purged, pending or missing. Slow "
                           "on a busy topic (it reads every record); one audit at a time per writer.",
            "operationId": "audit", "security": _SECURE,
            "parameters": [
                _query("topic", {"type": "string", "maxLength": 249}, "one of the writer's topics (default: all)"),
                _query("since", _TIME, "only records published at or after"),
                _query("from_offsets", {"type": "string", "pattern": OFFSETS_PATTERN},
                       "PARTITION:OFFSET,... where each named partition starts (one topic; with since, the later)"),
                _query("examples", {"type": "integer", "minimum": 0, "maximum": 100}, "missing records shown (10)")],
            "responses": {"200": _json(_ref("Audit"), "the audit"), "400": _ERROR, "401": _UNAUTHORIZED,
                          "404": _json(_ref("Error"), "no such topic of the writer, or partition of the topic"),
                          "409": _json(_ref("Error"), "an audit is already running (see Retry-After)"),
                          "503": _UNAVAILABLE}}},
        "/api/user-errors": {"get": {
            "summary": "Recent user errors (read-only), newest first", "operationId": "userErrors",
            "security": _SECURE,
            "parameters": [_query("code", {"type": "string", "maxLength": 64}, "only this error code"),
                           _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "at most (100)")],
            "responses": {"200": _json(_ref("UserErrors"), "records"), "400": _ERROR, "401": _UNAUTHORIZED,
                          "503": _UNAVAILABLE}}},
    }
    for path, ops in paths.items():  # the role each /api operation needs (kapow.http.security)
        for method, op in ops.items():
            if path.startswith("/api"):
                op["x-kapow-role"] = "read" if method == "get" else "admin"
    return {
        "openapi": "3.0.3",
        "info": {"title": "KaPoW operations API", "version": __version__,
                 "description": "Dead-letter queue, user errors, the audit and live stats of one KaPoW writer. With a "
                                "token configured, every /api call needs Authorization: Bearer <token>: a read token "
                                "(KAPOW_READ_TOKEN) or an admin token (KAPOW_ADMIN_TOKEN) for every GET, an admin "
                                "token to reschedule or purge (x-kapow-role says which each operation needs)."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                "Error": _json(_ref("Error"), "the request cannot be served as asked (one-line reason)"),
                "Unauthorized": _json(_ref("Error"), "missing or wrong bearer token"),
                "Forbidden": _json(_ref("Error"), "a read token: rescheduling and purging need an admin token"),
                "Unavailable": _json(_ref("Error"), "Kafka cannot be reached"),
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A read token (GET) or an admin token (everything)."}},
        },
    }
