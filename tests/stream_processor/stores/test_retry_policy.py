"""The one retry policy (``stream_processor.retry.RetryPolicy``), pure: backoff growth and cap,
jitter bounds, the attempt and elapsed budgets, Retry-After honoured up to its cap, the loop
(``RetryPolicy.call``) with a fake clock; the stores' and the cloud backends' policies are that
class, and their LUPITA_* settings map onto it with the defaults they always had."""

from __future__ import annotations

import dataclasses
import random
import threading

import pytest

from stream_processor import stores
from stream_processor.models import cloud
from stream_processor.models.analyzer import factory as analyzer_factory
from stream_processor.models.analyzer.base import RetryPolicy as AnalyzerRetryPolicy
from stream_processor.models.analyzer.settings import AnalyzerSettings
from stream_processor.models.asr import factory as asr_factory
from stream_processor.models.asr.base import RetryPolicy as AsrRetryPolicy
from stream_processor.models.asr.settings import AsrSettings
from stream_processor.models.embeddings import factory as embed_factory
from stream_processor.models.embeddings.base import RetryPolicy as EmbedRetryPolicy
from stream_processor.models.embeddings.settings import EmbedSettings
from stream_processor.retry import GiveUp, RetryPolicy
from stream_processor.stores.settings import SinkSettings


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def failing(*outcomes):
    """A function that raises / returns the given outcomes in turn; counts its calls."""
    items = iter(outcomes)

    def fn():
        fn.calls += 1
        item = next(items)
        if isinstance(item, BaseException):
            raise item
        return item

    fn.calls = 0
    return fn


# --- backoff, cap, jitter ----------------------------------------------------------------------


def test_backoff_grows_by_the_multiplier_up_to_the_cap():
    p = RetryPolicy(initial_delay_s=0.5, multiplier=3, max_delay_s=10)
    assert [p.backoff(n) for n in range(1, 7)] == [0.5, 1.5, 4.5, 10, 10, 10]
    doubling = RetryPolicy(initial_delay_s=0.2, max_delay_s=5)  # the stores' defaults
    assert [doubling.backoff(n) for n in range(1, 7)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0])
    assert RetryPolicy(initial_delay_s=2, multiplier=1, max_delay_s=9).backoff(50) == 2


def test_an_endless_loop_can_ask_for_any_round_and_stays_at_the_cap():
    # what a stage's "wait and try again" loop uses: delay(n) only, no budget consulted
    p = RetryPolicy(initial_delay_s=2, max_delay_s=60, jitter=0, max_attempts=None, max_elapsed_s=None)
    assert [p.delay(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [2, 4, 8, 16, 32, 60, 60]
    assert p.delay(5000) == 60 and p.backoff(10**9) == 60  # no OverflowError
    assert RetryPolicy(initial_delay_s=0).backoff(5000) == 0
    assert isinstance(p.next_delay(10**6, elapsed_s=1e9), float)  # no budget: never gives up
    with pytest.raises(ValueError, match="from 1"):
        p.delay(0)


@pytest.mark.parametrize("jitter", [0.0, 0.2, 0.5, 1.0])
def test_jitter_draws_each_wait_from_its_fraction_below_the_backoff(jitter):
    rng = random.Random(11)
    p = RetryPolicy(initial_delay_s=1, max_delay_s=4, jitter=jitter)
    for n in (1, 2, 3, 4, 9):
        b = p.backoff(n)
        waits = [p.delay(n, rng) for _ in range(300)]
        assert all(b * (1 - jitter) <= w <= b for w in waits)  # never above the backoff (or the cap)
        if jitter:
            assert max(waits) - min(waits) > 0.8 * jitter * b  # spread over the band
        else:
            assert set(waits) == {b}


def test_the_cloud_jitter_stays_within_20_percent_below_the_backoff():
    p = cloud.RetryPolicy()
    waits = [p.delay(4, random.Random(i)) for i in range(200)]
    assert all(0.8 * 4.0 <= w <= 4.0 for w in waits)
    assert all(w <= 8.0 for w in (p.delay(n) for n in range(1, 40)))  # the 8 s cap is never passed


# --- budgets and Retry-After -------------------------------------------------------------------


def test_attempt_and_elapsed_budgets():
    p = RetryPolicy(max_attempts=3, max_elapsed_s=10, initial_delay_s=4, max_delay_s=100, jitter=0)
    assert p.next_delay(1) == 4
    assert p.next_delay(2, elapsed_s=2) == 8  # ends at 10 s: still inside
    assert p.next_delay(1, elapsed_s=6.5) == GiveUp("elapsed", "max 10 s elapsed", 1, 6.5)
    assert p.next_delay(3) == GiveUp("attempts", "max 3 attempts", 3, 0.0)
    assert RetryPolicy(max_attempts=1).next_delay(1).kind == "attempts"  # 1 = no retry


def test_retry_after_is_honoured_as_the_wait_up_to_its_cap():
    p = RetryPolicy(max_retry_after_s=30, initial_delay_s=1, max_delay_s=5, jitter=0.5, max_elapsed_s=None)
    assert p.next_delay(1, retry_after_s=12.5) == 12.5  # as given: no backoff, no jitter, no max_delay_s
    assert p.next_delay(1, retry_after_s=30) == 30
    assert p.next_delay(1, retry_after_s=-3) == 0
    assert p.next_delay(2, retry_after_s=31) == GiveUp("retry_after", "Retry-After 31 s exceeds the 30 s limit", 2, 0.0)
    # it still counts against the time budget, and the attempt budget comes first
    q = RetryPolicy(max_attempts=2, max_retry_after_s=30, max_elapsed_s=10)
    assert q.next_delay(1, elapsed_s=5, retry_after_s=6).kind == "elapsed"
    assert q.next_delay(2, retry_after_s=1).kind == "attempts"
    # without a cap (the stores' default) a Retry-After is not consulted: the backoff is used
    assert RetryPolicy(initial_delay_s=1, jitter=0).next_delay(1, retry_after_s=600) == 1


def test_nonsense_is_refused():
    for bad in ({"max_attempts": 0}, {"multiplier": 0.5}, {"jitter": -0.1}, {"jitter": 2}, {"max_elapsed_s": -1},
                {"initial_delay_s": -1}, {"max_delay_s": -1}, {"max_retry_after_s": -1},
                {"max_elapsed_s": float("nan")}):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)
    with pytest.raises(TypeError):  # keyword-only: the field order is not an interface
        RetryPolicy(4, 0.5)  # type: ignore[misc]


def test_base_delay_s_is_another_name_of_initial_delay_s():
    p = RetryPolicy(base_delay_s=1.5)
    assert p.initial_delay_s == 1.5 and p == RetryPolicy(initial_delay_s=1.5)
    assert dataclasses.replace(p, max_attempts=2).initial_delay_s == 1.5
    assert dataclasses.replace(p, initial_delay_s=3).initial_delay_s == 3
    assert AsrRetryPolicy(base_delay_s=0.05).initial_delay_s == 0.05


# --- the loop ----------------------------------------------------------------------------------


def test_call_retries_retryable_errors_with_growing_waits_then_returns():
    t = FakeTime()
    fn = failing(ConnectionError("a"), ConnectionError("b"), "ok")
    seen = []
    p = RetryPolicy(initial_delay_s=1, jitter=0, max_elapsed_s=None)
    result = p.call(fn, retryable=lambda e: isinstance(e, ConnectionError), sleep=t.sleep, clock=t.clock,
                    on_retry=lambda n, d, e: seen.append((n, d, str(e))))
    assert result == "ok" and fn.calls == 3
    assert t.sleeps == [1, 2] and seen == [(1, 1, "a"), (2, 2, "b")]


def test_call_raises_a_non_retryable_error_at_once_as_it_is():
    t = FakeTime()
    error = ValueError("bad")
    fn = failing(error)
    with pytest.raises(ValueError) as info:
        RetryPolicy().call(fn, retryable=lambda e: False, sleep=t.sleep, clock=t.clock,
                           give_up=lambda e, why: RuntimeError("not me"))
    assert info.value is error and fn.calls == 1 and t.sleeps == []


def test_giving_up_raises_what_give_up_says_chained_to_the_last_error_or_the_error_itself():
    t = FakeTime()
    last = ConnectionError("third")
    whys = []

    def give_up(exc, why):
        whys.append(why)
        return RuntimeError(why.reason)

    p = RetryPolicy(max_attempts=3, initial_delay_s=1, jitter=0, max_elapsed_s=None)
    with pytest.raises(RuntimeError, match="max 3 attempts") as info:
        p.call(failing(ConnectionError("1"), ConnectionError("2"), last), retryable=lambda e: True,
               give_up=give_up, sleep=t.sleep, clock=t.clock)
    assert info.value.__cause__ is last and whys == [GiveUp("attempts", "max 3 attempts", 3, 3.0)]
    with pytest.raises(ConnectionError) as info:  # no give_up (or it returns None): the error itself
        p.call(failing(ConnectionError("1"), ConnectionError("2"), last), retryable=lambda e: True,
               sleep=t.sleep, clock=t.clock)
    assert info.value is last


def test_call_honours_retry_after_and_the_elapsed_budget():
    t = FakeTime()

    class Busy(Exception):
        def __init__(self, after):
            self.after = after

    p = RetryPolicy(max_attempts=None, max_elapsed_s=10, initial_delay_s=1, jitter=0, max_retry_after_s=5)
    fn = failing(Busy(3), Busy(None), Busy(4), Busy(None))
    whys = []
    with pytest.raises(Busy):
        p.call(fn, retryable=lambda e: True, retry_after=lambda e: e.after, sleep=t.sleep, clock=t.clock,
               give_up=lambda e, why: whys.append(why))
    # 3 (Retry-After) + 2 (backoff of attempt 2) + 4 (Retry-After) = 9 s; attempt 4's wait (8 s) would pass 10 s
    assert t.sleeps == [3, 2, 4] and fn.calls == 4
    assert whys == [GiveUp("elapsed", "max 10 s elapsed", 4, 9.0)]
    fn = failing(Busy(60))
    with pytest.raises(Busy):
        p.call(fn, retryable=lambda e: True, retry_after=lambda e: e.after, sleep=t.sleep, clock=t.clock,
               give_up=lambda e, why: whys.append(why))
    assert whys[-1].kind == "retry_after" and fn.calls == 1


def test_a_stop_event_ends_the_wait_and_gives_up_as_stopped():
    stop = threading.Event()
    stop.set()
    whys = []
    fn = failing(ConnectionError("down"), "never")
    with pytest.raises(ConnectionError):
        RetryPolicy(initial_delay_s=60, max_elapsed_s=None).call(
            fn, retryable=lambda e: True, stop=stop, give_up=lambda e, why: whys.append(why))
    assert fn.calls == 1 and [w.kind for w in whys] == ["stopped"]


# --- one class, and the settings mapped onto it ------------------------------------------------


def test_the_store_and_cloud_policies_are_the_one_class():
    assert stores.RetryPolicy is RetryPolicy and stores.retry.RetryPolicy is RetryPolicy
    one = {f.name for f in dataclasses.fields(RetryPolicy)}
    for cls in (cloud.RetryPolicy, AsrRetryPolicy, EmbedRetryPolicy, AnalyzerRetryPolicy):
        assert issubclass(cls, RetryPolicy)
        # only defaults differ, plus the two names of the cloud retry log line
        assert {f.name for f in dataclasses.fields(cls)} - one == {"label", "stage"}
        assert cls.backoff is RetryPolicy.backoff and cls.delay is RetryPolicy.delay
        assert cls.next_delay is RetryPolicy.next_delay and cls.call is RetryPolicy.call


@pytest.fixture()
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith(("LUPITA_SINK_RETRY", "LUPITA_ASR_", "LUPITA_EMBED_", "LUPITA_ANALYZER_")):
            monkeypatch.delenv(name)


def test_the_settings_map_onto_the_policy_with_their_old_defaults(clean_env):
    assert SinkSettings().retry_policy == RetryPolicy(
        max_attempts=6, max_elapsed_s=30.0, initial_delay_s=0.2, max_delay_s=5.0, multiplier=2.0, jitter=0.5,
        max_retry_after_s=None) == RetryPolicy()
    cloud_defaults = dict(max_attempts=4, max_elapsed_s=None, initial_delay_s=0.5, max_delay_s=8.0, multiplier=2.0,
                          jitter=0.2, max_retry_after_s=30.0)
    assert asr_factory.retry_policy(AsrSettings()) == AsrRetryPolicy(**cloud_defaults) == AsrRetryPolicy()
    assert embed_factory.retry_policy(EmbedSettings()) == EmbedRetryPolicy(**cloud_defaults) == EmbedRetryPolicy()
    analyzer = dict(cloud_defaults, max_attempts=3, initial_delay_s=1.0, max_delay_s=10.0)
    assert analyzer_factory.retry_policy(AnalyzerSettings()) == AnalyzerRetryPolicy(**analyzer) == AnalyzerRetryPolicy()
    assert (AsrRetryPolicy().label, AsrRetryPolicy().stage) == ("asr", "transcriber")
    assert (EmbedRetryPolicy().label, EmbedRetryPolicy().stage) == ("embedding", "embedder")
    assert (AnalyzerRetryPolicy().label, AnalyzerRetryPolicy().stage) == ("analyzer", "analyzer")


@pytest.mark.parametrize("prefix, settings, factory, cls", [
    ("ASR", AsrSettings, asr_factory, AsrRetryPolicy),
    ("EMBED", EmbedSettings, embed_factory, EmbedRetryPolicy),
    ("ANALYZER", AnalyzerSettings, analyzer_factory, AnalyzerRetryPolicy),
])
def test_the_cloud_settings_are_read_into_the_policy(clean_env, monkeypatch, prefix, settings, factory, cls):
    monkeypatch.setenv(f"LUPITA_{prefix}_MAX_ATTEMPTS", "2")
    monkeypatch.setenv(f"LUPITA_{prefix}_BACKOFF_SECONDS", "0.25")
    monkeypatch.setenv(f"LUPITA_{prefix}_MAX_BACKOFF_SECONDS", "3")
    monkeypatch.setenv(f"LUPITA_{prefix}_MAX_RETRY_AFTER_SECONDS", "7")
    p = factory.retry_policy(settings())
    assert type(p) is cls
    assert (p.max_attempts, p.initial_delay_s, p.max_delay_s, p.max_retry_after_s) == (2, 0.25, 3.0, 7.0)
    assert (p.max_elapsed_s, p.multiplier, p.jitter) == (None, 2.0, 0.2)


def test_the_sink_settings_are_read_into_the_policy(clean_env, monkeypatch):
    monkeypatch.setenv("LUPITA_SINK_RETRY_INITIAL_SECONDS", "0.5")
    monkeypatch.setenv("LUPITA_SINK_RETRY_MAX_DELAY_SECONDS", "2")
    s = SinkSettings().retry_policy
    assert (s.initial_delay_s, s.max_delay_s, [s.backoff(n) for n in (1, 2, 3)]) == (0.5, 2.0, [0.5, 1.0, 2.0])
