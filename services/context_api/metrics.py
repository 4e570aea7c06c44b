"""Prometheus metrics of the context API (names ``lupita_context_api_<thing>_<unit>``).

With several worker processes (``context_api_workers``) every metric lives in the Prometheus
multiprocess directory and the parent process serves their sum (:mod:`context_api.workers`).

No label ever holds a phone number, a person hash or a free-form value: message types and tool
names outside the known ones are counted as ``unknown``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGE_TYPES = ("assistant-request", "tool-calls", "end-of-call-report", "status-update", "transcript",
                 "conversation-update", "speech-update", "unknown")
TOOLS = ("getUserContext", "saveUserFact", "forgetUserFact", "scheduleCallback", "unknown")
TOOL_OUTCOMES = ("ok", "error", "timeout")
REJECTIONS = ("auth_missing", "auth_bad", "auth_stale", "too_large", "malformed_json", "bad_shape")
DEGRADE_REASONS = ("timeout", "error", "no_phone")
REPORT_OUTCOMES = ("stored", "duplicate")

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

MESSAGES = Counter("lupita_context_api_webhook_messages_total", "VAPI webhook messages accepted, by type", ["type"])
REJECTED = Counter("lupita_context_api_webhook_rejected_total",
                   "Webhook requests refused before any handling (401, 413, 400), by reason", ["reason"])
ASSISTANT_SECONDS = Histogram("lupita_context_api_assistant_request_seconds",
                              "Time to answer an assistant-request", buckets=_LATENCY)
DEGRADED = Counter("lupita_context_api_assistant_request_degraded_total",
                   "assistant-requests answered with the minimal context, by reason", ["reason"])
TOOL_CALLS = Counter("lupita_context_api_tool_calls_total", "Tool calls answered, by tool and outcome",
                     ["tool", "outcome"])
TOOL_SECONDS = Histogram("lupita_context_api_tool_call_seconds", "Time to answer one tool call", ["tool"],
                         buckets=_LATENCY)
REPORTS = Counter("lupita_context_api_end_of_call_reports_total",
                  "end-of-call-report messages, stored or a duplicate of one stored", ["outcome"])

API_ENDPOINTS = ("context", "facts_list", "facts_add", "facts_retract", "callbacks_list", "callbacks_create",
                 "callbacks_cancel", "erasure")
API_STATUSES = ("ok", "error", "invalid", "unavailable")
API_REJECTIONS = ("auth_missing", "auth_bad", "too_large", "invalid")
API_REQUESTS = Counter("lupita_context_api_api_requests_total", "JSON API (/v1) requests handled, by endpoint and status",
                       ["endpoint", "status"])
API_SECONDS = Histogram("lupita_context_api_api_request_seconds", "Time of a JSON API (/v1) request's store work",
                        ["endpoint"], buckets=_LATENCY)
API_REJECTED = Counter("lupita_context_api_api_rejected_total",
                       "JSON API (/v1) requests refused before any handling (401, 413, 422), by reason", ["reason"])

PAST_OUTCOMES = ("stored", "ok", "cached", "timeout", "error", "no_anchor", "foreign")
PAST = Counter("lupita_context_api_past_conversations_total",
               "Reads of a caller's relevant past conversations, by outcome (stored: the answer the stream processor "
               "kept at the person's last analysis, no Weaviate query; ok: asked Weaviate; cached: answered from "
               "the process's cache; timeout/error: the context "
               "went without them; no_anchor: no analysed call to compare with; foreign: an object of another "
               "person dropped)", ["outcome"])
LIVE_ALERTS = Counter("lupita_context_api_live_alerts_total",
                      "Alerts of the live call included in a context (call_alerts of its call id)")
GATEWAY_OUTCOMES = ("started", "already", "refused", "error", "no_consent", "no_listen_url")
GATEWAY = Counter("lupita_context_api_gateway_listen_total",
                  "Requests to the telephony gateway to listen to a call (status-update in-progress), by outcome",
                  ["outcome"])

CALLBACK_RETRY_REASONS = ("kafka", "store")
CALLBACKS_PUBLISHED = Counter("lupita_context_api_callbacks_published_total",
                              "Due callbacks published to callbacks.due and marked dispatched")
CALLBACKS_RETRIES = Counter("lupita_context_api_callbacks_publish_retries_total",
                            "Dispatcher rounds that failed and will be retried after a back-off, by cause",
                            ["reason"])
CALLBACKS_BACKLOG = Gauge("lupita_context_api_callbacks_due_backlog",
                          "Pending callbacks whose time has come, not yet published (as of the last round)",
                          multiprocess_mode="livesum")  # several workers: only worker 0 dispatches
CALLBACKS_HOLDER = Gauge("lupita_context_api_callbacks_dispatcher_holder",
                         "Dispatchers of this process holding the callbacks advisory lock, 1 or 0 (one holder "
                         "in the whole deployment publishes callbacks.due; the others stand by)",
                         multiprocess_mode="livesum")
CALLBACKS_RECONCILED = Counter("lupita_context_api_callbacks_reconciled_total",
                               "Callbacks in doubt ('dispatching' after a holder died) that a reconcile found "
                               "committed in callbacks.due and marked dispatched without sending them again")
CALLBACKS_LAG = Histogram("lupita_context_api_callbacks_publish_lag_seconds",
                          "From a callback's due time to its record's ack by the broker",
                          buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600))

for _o in PAST_OUTCOMES:
    PAST.labels(_o)
for _o in GATEWAY_OUTCOMES:
    GATEWAY.labels(_o)
for _r in CALLBACK_RETRY_REASONS:
    CALLBACKS_RETRIES.labels(_r)
for _e in API_ENDPOINTS:
    API_SECONDS.labels(_e)
    for _s in API_STATUSES:
        API_REQUESTS.labels(_e, _s)
for _r in API_REJECTIONS:
    API_REJECTED.labels(_r)
for _t in MESSAGE_TYPES:
    MESSAGES.labels(_t)
for _r in REJECTIONS:
    REJECTED.labels(_r)
for _r in DEGRADE_REASONS:
    DEGRADED.labels(_r)
for _tool in TOOLS:
    TOOL_SECONDS.labels(_tool)
    for _o in TOOL_OUTCOMES:
        TOOL_CALLS.labels(_tool, _o)
for _o in REPORT_OUTCOMES:
    REPORTS.labels(_o)
