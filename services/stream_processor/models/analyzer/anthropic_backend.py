"""Claude as the analyzer, through the official ``anthropic`` client (``POST {base_url}/v1/messages``).

Request (Messages API, headers ``x-api-key`` and ``anthropic-version`` set by the client):
``model``, ``max_tokens``, ``temperature``, a ``system`` prompt that describes the catalogues
(topic ids, emotion ids, behavioral codes with their descriptions, fact types), one user message
holding the transcript as numbered lines (``[person 3 | 12.4-15.0 s] texto``), one tool
``record_call_analysis`` whose ``input_schema`` IS the CallAnalysis schema
(:func:`stream_processor.models.analyzer.schema.analysis_schema`), and ``tool_choice = {"type": "tool",
"name": "record_call_analysis"}`` so the answer is a ``tool_use`` content block whose ``input``
is schema-shaped JSON. Only the utterances' text, leg, seq and times are sent: no call id, no
phone number, no other metadata.

Answer: ``{"type": "message", "content": [..., {"type": "tool_use", "name":
"record_call_analysis", "input": {...}}], "stop_reason": "tool_use", "usage": {...}}``. The
input is validated against the schema and the call's utterances before use.

Errors (all :class:`~stream_processor.models.analyzer.base.AnalyzerBackendError`, so
:class:`~stream_processor.models.analyzer.base.FallbackAnalyzer` answers locally; the client's
exceptions are translated by :func:`~stream_processor.models.cloud.translate_sdk_error`, connection
errors named by their type only): 408/409/429/5xx/529, timeouts and connection errors are retried
with backoff, honouring ``Retry-After`` up to a limit (the client's own retries are off); 401/403 raise :class:`AnalyzerAuthError` at once; other 4xx
are not retried; a 2xx body that is not the documented JSON raises
:class:`AnalyzerMalformedResponse`; ``stop_reason: refusal`` or no ``tool_use`` block raises
:class:`AnalyzerRefused`; a truncated (``max_tokens``) or schema-invalid input raises
:class:`AnalyzerOutputInvalid`. The API key is a ``SecretStr`` read only to build the client;
neither it nor any transcript text is logged (the client's own DEBUG request log, which holds the
request JSON, is held at INFO).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Mapping, Sequence

from pydantic import SecretStr

from stream_processor.models.analyzer.base import (
    Analyzer,
    AnalyzerAuthError,
    AnalyzerBackendError,
    AnalyzerMalformedResponse,
    AnalyzerOutputInvalid,
    AnalyzerRefused,
    RetryPolicy,
    prepare_utterances,
)
from stream_processor.models.analyzer.catalog import Catalogues, load_catalogues
from stream_processor.models.analyzer.facts import calibrate_facts
from stream_processor.models.analyzer.schema import FACT_TYPES, analysis_schema, to_call_analysis
from stream_processor.models.cloud import json_object, translate_sdk_error
from stream_processor.contracts import CallAnalysis, Utterance

log = logging.getLogger("stream_processor.models.analyzer")

TOOL_NAME = "record_call_analysis"
TOOL_DESCRIPTION = ("Record the analysis of one finished phone call between Lupita (an AI companion) and an "
                    "elderly person. Call this tool exactly once with the complete analysis.")


def system_prompt(cat: Catalogues) -> str:
    topics = "\n".join(f"- {t.id}: {t.label}" for t in cat.topics.topics)
    emotions = "\n".join(f"- {e.id}: {e.label}" for e in cat.emotions.emotions) + \
        "\n- neutral: no clear emotion"
    codes = "\n".join(f"- {c.id} (leg {c.leg}): {c.description}" for c in cat.codes.codes)
    return f"""You analyse transcripts of phone calls in Spanish between Lupita, an AI voice companion from
SaludCompartida, and an elderly person (mostly in Oaxaca, Mexico). Legs: "lupita" is the companion,
"person" is the elderly person. Each transcript line is "[leg seq | start-end s] text"; the text
comes from speech recognition and may contain errors.

Record your analysis with the {TOOL_NAME} tool:
- topics: ids from this list only, most important first:
{topics}
- emotion_primary: the person's dominant emotion over the call, one of:
{emotions}
- emotion_trend: the person's emotion in each of their utterances ("seq" of a person line).
- behavioral_codes: ids of the codes below that occurred (each code belongs to the leg named):
{codes}
- facts: durable facts about the person themself, stated affirmatively (a negated statement such as
  "no tengo diabetes" is not a fact; a question is not a fact; a relative's illness is not the person's
  condition). type is one of {", ".join(FACT_TYPES)}; key is snake_case English from this list:
  * health: medication, condition, allergy (protected: only from the person's own clear words;
    a medication value is the generic name, spelled correctly), next_appointment (value: what and
    when, e.g. "cita con el doctor el martes");
  * family: <relative>_name (daughter, son, granddaughter, grandson, sister, brother, wife, husband,
    niece, nephew, ...: "mi nieto Rodrigo" -> grandson_name, value "Rodrigo"), <relative>_lives_in
    (where that relative lives or went: "mi hijo se fue a Chicago" -> son_lives_in, value "Chicago");
  * pet: <animal>_name (dog_name, cat_name, ...), pet;
  * routine: wake_up_time, bedtime, breakfast_time, lunch_time, dinner_time (value "HH:MM", 24 h),
    walk, mass_attendance;
  * preference: likes, dislikes (value: the thing, without the article);
  * other: lives_in (the person's own town) and anything durable not listed.
  For things a person can have several of (medication, condition, allergy, every <relative>_name,
  <relative>_lives_in, <animal>_name, pet, likes, dislikes) append a dot and a snake_case ASCII slug
  of the value: medication.metformina, condition.diabetes, grandson_name.rodrigo,
  son_lives_in.chicago, dog_name.canelo, likes.cafe_de_olla. Single-valued keys have no slug.
  The transcript comes from speech recognition of telephone audio and has errors: a misheard
  medication or name ("metformía", "Beronica") is given in its correct spelling in value
  (metformina, Verónica) when the reading is clear; when you cannot tell what was said, leave the
  fact out. confidence in [0, 1]: how sure you are of the fact as read. evidence cites the line
  (leg, seq) and quotes its words exactly as transcribed (the quote is located in the line).
- summary: two or three sentences in Spanish.
Do not invent anything that is not in the transcript."""


def transcript_text(utterances: Sequence[Utterance], max_chars: int) -> tuple[str, int]:
    """The transcript as numbered lines (at most ``max_chars``) and how many utterances it holds."""
    lines: list[str] = []
    size = 0
    for u in utterances:
        text = " ".join(u.text.split())
        if not text:
            continue
        line = f"[{u.leg} {u.seq} | {u.start_s:.1f}-{u.end_s:.1f} s] {text}"
        if size + len(line) + 1 > max_chars:
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines), len(lines)


class AnthropicAnalyzer(Analyzer):
    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: SecretStr,
        catalogues: Catalogues | None = None,
        base_url: str | None = None,
        model: str = "claude-sonnet-4-5",
        max_tokens: int = 2048,
        temperature: float = 0.0,
        timeout_s: float = 60.0,
        max_transcript_chars: int = 60000,
        retry: RetryPolicy = RetryPolicy(),
        min_fact_confidence: float = 0.0,
    ) -> None:
        import anthropic  # imported here: only deployments that select this backend need it loaded

        if not api_key.get_secret_value():
            raise ValueError("the Anthropic analyzer needs an API key (LUPITA_ANALYZER_ANTHROPIC_API_KEY)")
        self.catalogues = catalogues or load_catalogues()
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_transcript_chars = max_transcript_chars
        self.retry = retry
        self.min_fact_confidence = min_fact_confidence
        self.schema = analysis_schema(self.catalogues)
        self.system = system_prompt(self.catalogues)
        # The client logs every request's JSON (the transcript) at DEBUG: hold its logger at INFO
        # or above, so that LUPITA_LOG_LEVEL=DEBUG never writes what a person said to the logs.
        client_log = logging.getLogger("anthropic")
        if client_log.getEffectiveLevel() < logging.INFO:
            client_log.setLevel(logging.INFO)
        self._anthropic = anthropic
        self._client = anthropic.Anthropic(api_key=api_key.get_secret_value(), base_url=base_url or None,
                                           max_retries=0, timeout=timeout_s)

    def close(self) -> None:
        self._client.close()

    def request_kwargs(self, transcript: str) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for one transcript."""
        return dict(
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            system=self.system,
            tools=[{"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": self.schema}],
            tool_choice={"type": "tool", "name": TOOL_NAME},
            messages=[{"role": "user", "content": "Transcripción de la llamada:\n" + transcript}],
        )

    def analyze(self, call_id: str, utterances: Sequence[Utterance], *,
                words: Mapping[tuple[str, int], Sequence[tuple[str, float | None]]] | None = None) -> CallAnalysis:
        utts = prepare_utterances(call_id, utterances)
        transcript, sent = transcript_text(utts, self.max_transcript_chars)
        if not transcript:
            raise AnalyzerBackendError(self.name, "nothing to send: the call has no transcript text")
        notes: list[str] = []
        total = sum(1 for u in utts if u.text.strip())
        if sent < total:
            notes.append(f"transcript truncated for {self.name}: {sent} of {total} utterances sent")
        kwargs = self.request_kwargs(transcript)
        t0 = time.monotonic()
        payload = self.retry.run(lambda: self._request(kwargs), backend=self.name, call_id=call_id)
        tool_input = self._tool_input(payload)
        result = to_call_analysis(call_id, tool_input, utts, self.catalogues, analyzer=self.name,
                                  schema=self.schema, backend=self.name, notes=notes)
        # the rules the local analyzer's facts follow too: canonical keys, protected classes only
        # from the person's words, confidence weighed by the quoted words' transcription
        facts, dropped = calibrate_facts(result.facts, words, min_confidence=self.min_fact_confidence)
        result = replace(result, facts=tuple(facts), notes=result.notes + tuple(dropped))
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        log.info("call analyzed", extra={
            "call_id": call_id, "stage": "analyzer", "backend": self.name, "model": self.model,
            "utterances": len(utts), "topics": len(result.topics), "codes": len(result.behavioral_codes),
            "facts": len(result.facts), "input_tokens": usage.get("input_tokens"),
            "output_tokens": usage.get("output_tokens"), "seconds": round(time.monotonic() - t0, 3)})
        return result

    # -- HTTP ----------------------------------------------------------------------------------

    def _request(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        anthropic = self._anthropic
        try:
            raw = self._client.messages.with_raw_response.create(**kwargs)
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as exc:
            # connection errors named by type only: the reason is stored in the analysis notes
            raise translate_sdk_error(self.name, exc, AnalyzerBackendError, auth_class=AnalyzerAuthError,
                                      key_setting="LUPITA_ANALYZER_ANTHROPIC_API_KEY", cause_by_type=True) from None
        # the body's size only: an answer may echo the transcript
        return json_object(self.name, raw.content, raw.status_code, AnalyzerMalformedResponse, quote_body=False)

    def _tool_input(self, payload: dict[str, Any]) -> Any:
        content = payload.get("content")
        if payload.get("type") != "message" or not isinstance(content, list):
            raise AnalyzerMalformedResponse(self.name, "answer is not a Messages API message "
                                            "(type 'message' with a 'content' list)")
        stop = payload.get("stop_reason")
        if stop == "refusal":
            raise AnalyzerRefused(self.name, "the model refused (stop_reason 'refusal')")
        blocks = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_use"]
        mine = [b for b in blocks if b.get("name") == TOOL_NAME]
        if not mine:
            kinds = ",".join(sorted({str(b.get("type")) for b in content if isinstance(b, dict)})) or "none"
            raise AnalyzerRefused(self.name, f"no {TOOL_NAME} tool_use block in the answer "
                                  f"(stop_reason {stop!r}, content blocks: {kinds})")
        if stop == "max_tokens":
            raise AnalyzerOutputInvalid(self.name, "the tool input was cut off at max_tokens "
                                        "(raise LUPITA_ANALYZER_MAX_TOKENS)")
        if "input" not in mine[0]:
            raise AnalyzerMalformedResponse(self.name, "tool_use block without 'input'")
        return mine[0]["input"]

