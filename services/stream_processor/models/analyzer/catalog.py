"""The analyzer's catalogues: topics, behavioral codes and the emotion lexicon are DATA.

They live in ``stream_processor/data/{topics,behavioral_codes,emotions}.json`` (shipped with the
package) and can be replaced by files named in the settings (``LUPITA_ANALYZER_TOPICS_PATH``, ...).
Each file is validated when it is loaded: unknown keys, duplicate ids, empty keyword lists and
regular expressions that do not compile are refused with a :class:`CatalogueError` naming the
file, the place in it (``codes[2].trigger.patterns[1]``) and what is wrong.

Keywords and patterns are written in plain Spanish, accents allowed: they are folded like the
transcript (lower case, no accents; see :func:`stream_processor.models.analyzer.text.fold`) before use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stream_processor.models.analyzer.text import fold, fold_pattern, keyword_regex

ID_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
EMOTION_NEUTRAL = "neutral"
LEGS = ("lupita", "person")


class CatalogueError(ValueError):
    """A catalogue file cannot be used; the message names the file, the place and the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(fold_pattern(pattern), re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from None


def _check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    for i, p in enumerate(patterns):
        if not p.strip():
            raise ValueError(f"pattern [{i}] is empty")
        try:
            _compile(p)
        except ValueError as exc:
            raise ValueError(f"pattern [{i}] {p!r} {exc}") from None
    return patterns


# --- topics ------------------------------------------------------------------------------------


class Keyword(_Model):
    term: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, le=10)


class Topic(_Model):
    id: str = Field(pattern=ID_PATTERN)
    label: str = Field(min_length=1)
    keywords: tuple[Union[str, Keyword], ...] = Field(min_length=1)
    # Sentences that are typical of the topic: the embedding signal (used only with an embedder).
    prototypes: tuple[str, ...] = ()
    min_score: float | None = Field(default=None, gt=0)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: tuple[Union[str, Keyword], ...]) -> tuple[Union[str, Keyword], ...]:
        for i, k in enumerate(v):
            term = k if isinstance(k, str) else k.term
            if not fold(term).strip(" *"):
                raise ValueError(f"keyword [{i}] is empty")
        return v

    @cached_property
    def matchers(self) -> tuple[tuple[re.Pattern[str], float], ...]:
        """One alternation per keyword weight (longest keywords first, so "me siento sola" is one
        match, not also "sola"); count non-overlapping matches x weight."""
        by_weight: dict[float, list[str]] = {}
        for k in self.keywords:
            kw = Keyword(term=k) if isinstance(k, str) else k
            by_weight.setdefault(kw.weight, []).append(kw.term)
        out = []
        for weight, terms in by_weight.items():
            terms.sort(key=lambda t: len(t), reverse=True)
            out.append((re.compile("|".join(f"(?:{keyword_regex(t)})" for t in terms)), weight))
        return tuple(out)


class TopicCatalogue(_Model):
    version: Literal[1]
    # A keyword in Lupita's leg counts this much (asking about a topic is weaker evidence than the
    # person talking about it); the person's leg counts 1.
    lupita_leg_weight: float = Field(default=0.5, ge=0, le=1)
    # ... and this much when the person answered it (her next turn has ``answer_min_words`` words
    # or more): a topic asked about and answered is a topic of the conversation, even when the
    # recogniser lost the words of the answer.
    lupita_answered_weight: float = Field(default=0.5, ge=0, le=1)
    answer_min_words: int = Field(default=4, ge=1)
    default_min_score: float = Field(default=1.0, gt=0)
    topics: tuple[Topic, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "TopicCatalogue":
        _unique_ids([t.id for t in self.topics], "topics")
        return self

    def get(self, topic_id: str) -> Topic:
        for t in self.topics:
            if t.id == topic_id:
                return t
        raise KeyError(topic_id)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.topics)


# --- emotions ----------------------------------------------------------------------------------


class Emotion(_Model):
    id: str = Field(pattern=ID_PATTERN)
    label: str = Field(min_length=1)
    terms: tuple[Union[str, Keyword], ...] = Field(min_length=1)

    @cached_property
    def matchers(self) -> tuple[tuple[re.Pattern[str], float], ...]:
        out = []
        for k in self.terms:
            kw = Keyword(term=k) if isinstance(k, str) else k
            out.append((re.compile(keyword_regex(kw.term)), kw.weight))
        return tuple(out)


class EmotionLexicon(_Model):
    version: Literal[1]
    # Words before a term that negate it ("no estoy triste"), within the same clause.
    negation_window: int = Field(default=3, ge=1, le=6)
    # A negated term of emotion X counts for Y with this weight factor ("no estoy contenta" ->
    # some tristeza); emotions not listed here simply do not count when negated.
    negated_as: dict[str, str] = Field(default_factory=dict)
    negated_weight: float = Field(default=0.5, ge=0, le=1)
    # A person segment is labelled with its top emotion when that scores at least this much...
    segment_min_score: float = Field(default=0.5, gt=0)
    # ...and the call's primary emotion needs this much summed over the person's segments.
    call_min_score: float = Field(default=1.0, gt=0)
    emotions: tuple[Emotion, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "EmotionLexicon":
        ids = [e.id for e in self.emotions]
        _unique_ids(ids, "emotions")
        if EMOTION_NEUTRAL in ids:
            raise ValueError(f"emotions: {EMOTION_NEUTRAL!r} is implicit (no term makes a segment neutral); "
                             "remove it")
        for src, dst in self.negated_as.items():
            if src not in ids or dst not in ids:
                raise ValueError(f"negated_as: {src!r} -> {dst!r} names an emotion that is not in 'emotions' "
                                 f"({', '.join(ids)})")
        return self

    @property
    def ids(self) -> tuple[str, ...]:
        """Every label the analyzer can give, ``neutral`` last."""
        return tuple(e.id for e in self.emotions) + (EMOTION_NEUTRAL,)


# --- behavioral codes --------------------------------------------------------------------------


class PatternTrigger(_Model):
    """The code fires when one of ``patterns`` matches an utterance of the code's leg."""

    type: Literal["patterns"]
    patterns: tuple[str, ...] = Field(min_length=1)
    # Skip a match that follows a negation in its clause ("no me siento sola").
    negatable: bool = True
    # If given, one of these must also match in the same leg within ``context_utterances``
    # utterances of the match (0 = the same utterance).
    also_requires: tuple[str, ...] = ()
    context_utterances: int = Field(default=0, ge=0, le=10)

    @field_validator("patterns", "also_requires")
    @classmethod
    def _patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_patterns(v)

    @cached_property
    def compiled(self) -> tuple[re.Pattern[str], ...]:
        return tuple(_compile(p) for p in self.patterns)

    @cached_property
    def compiled_requires(self) -> tuple[re.Pattern[str], ...]:
        return tuple(_compile(p) for p in self.also_requires)


class EchoOpenQuestionTrigger(_Model):
    """Lupita asks an open question that takes up the person's own words.

    Fires on a Lupita sentence that matches one of ``open_question_patterns`` and shares at
    least ``min_shared_words`` content words (``min_word_length`` letters or more, not stop
    words, compared after light stemming) with the person's last ``lookback_utterances``
    utterances before it.
    """

    type: Literal["echo_open_question"]
    open_question_patterns: tuple[str, ...] = Field(min_length=1)
    min_shared_words: int = Field(default=1, ge=1, le=10)
    min_word_length: int = Field(default=4, ge=2, le=12)
    lookback_utterances: int = Field(default=2, ge=1, le=10)

    @field_validator("open_question_patterns")
    @classmethod
    def _patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_patterns(v)

    @cached_property
    def compiled(self) -> tuple[re.Pattern[str], ...]:
        return tuple(_compile(p) for p in self.open_question_patterns)


Trigger = Annotated[Union[PatternTrigger, EchoOpenQuestionTrigger], Field(discriminator="type")]


class BehavioralCode(_Model):
    id: str = Field(pattern=ID_PATTERN)
    description: str = Field(min_length=1)
    leg: Literal["lupita", "person"]
    trigger: Trigger

    @model_validator(mode="after")
    def _leg(self) -> "BehavioralCode":
        if isinstance(self.trigger, EchoOpenQuestionTrigger) and self.leg != "lupita":
            raise ValueError("an echo_open_question trigger looks at Lupita's questions: leg must be 'lupita'")
        return self


class CodeCatalogue(_Model):
    version: Literal[1]
    # Words never counted as shared content words (echo detection).
    stopwords: tuple[str, ...] = ()
    codes: tuple[BehavioralCode, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "CodeCatalogue":
        _unique_ids([c.id for c in self.codes], "codes")
        return self

    @cached_property
    def stopword_set(self) -> frozenset[str]:
        return frozenset(fold(w) for w in self.stopwords)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.codes)


# --- loading -----------------------------------------------------------------------------------


def _unique_ids(ids: list[str], what: str) -> None:
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if x in seen:
            raise ValueError(f"{what}[{i}]: duplicate id {x!r}")
        seen.add(x)


def _where(loc: tuple[object, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _format(name: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        # Discriminated unions put the tag in the path ("trigger.patterns.patterns"): drop it.
        loc = tuple(p for i, p in enumerate(err["loc"])
                    if not (isinstance(p, str) and i > 0 and err["loc"][i - 1] == "trigger" and p in
                            ("patterns", "echo_open_question") and i + 1 < len(err["loc"])))
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{_where(loc)}: {msg}")
    return f"{name}: " + "; ".join(problems)


M = TypeVar("M", bound=BaseModel)


def _load(model: type[M], path: Path | None, default_name: str) -> M:
    if path is None:
        ref = resources.files("stream_processor") / "data" / default_name
        name = f"stream_processor/data/{default_name}"
        try:
            raw = ref.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CatalogueError(f"{name}: the packaged catalogue is missing (is the package installed with "
                                 "its data files?)") from None
    else:
        name = str(path)
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CatalogueError(f"{name}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogueError(f"{name}: cannot be read ({exc})") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CatalogueError(f"{name}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise CatalogueError(f"{name}: the top level must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CatalogueError(_format(name, exc)) from None


@dataclass(frozen=True)
class Catalogues:
    topics: TopicCatalogue
    codes: CodeCatalogue
    emotions: EmotionLexicon


def load_topics(path: Path | None = None) -> TopicCatalogue:
    return _load(TopicCatalogue, path, "topics.json")


def load_codes(path: Path | None = None) -> CodeCatalogue:
    return _load(CodeCatalogue, path, "behavioral_codes.json")


def load_emotions(path: Path | None = None) -> EmotionLexicon:
    return _load(EmotionLexicon, path, "emotions.json")


def load_catalogues(topics: Path | None = None, codes: Path | None = None,
                    emotions: Path | None = None) -> Catalogues:
    """The three catalogues (packaged ones where no path is given), validated."""
    return Catalogues(load_topics(topics), load_codes(codes), load_emotions(emotions))
