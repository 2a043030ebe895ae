"""The console sampler's arithmetic: rates from successive samples, retry tiers by name (no broker needed)."""

from __future__ import annotations

import time

from infra._console_sampler import LagSampler, Sample, retry_tiers_of
from producers import KafkaConnection


def _sampler(*samples: Sample) -> LagSampler:
    sampler = LagSampler(KafkaConnection(), [], interval_s=1.0, window_s=3600.0)
    sampler._samples.extend(samples)
    return sampler


def test_handled_and_retried_are_the_pace_of_the_positions_between_samples() -> None:
    now = time.time()
    sampler = _sampler(
        Sample(now - 20, committed={"credits": {"session/0": 10}}, retry_ends={"credits": {}}),
        Sample(
            now - 10,
            committed={"credits": {"session/0": 60, "session/1": 5}},
            retry_ends={"credits": {"retry.credits.1/0": 3}},
        ),
        Sample(
            now,
            committed={"credits": {"session/0": 40, "session/1": 25}},  # reset backwards: counted as 0, not negative
            retry_ends={"credits": {"retry.credits.1/0": 13}},
        ),
    )
    assert sampler.handled_series("credits") == [(now - 10, 5.0), (now, 2.0)]
    assert sampler.retried_series("credits") == [(now - 10, 0.0), (now, 1.0)]
    assert sampler.handled_series("nobody") == []


def test_spread_counts_what_happened_between_two_samples_per_second() -> None:
    now = time.time()
    sampler = _sampler(Sample(now - 20), Sample(now - 10), Sample(now))
    happened = [now - 15, now - 12, now - 10, now - 1, now - 30]
    spread = sampler.spread(happened)
    assert [at for at, _ in spread] == [now - 10, now]
    assert [round(rate, 6) for _, rate in spread] == [0.3, 0.1]


def test_samples_older_than_the_window_are_left_out() -> None:
    now = time.time()
    sampler = _sampler(Sample(now - 7200, records={"session": 1}), Sample(now - 5, records={"session": 11}))
    sampler.window_s = 3600.0
    assert [sample.at for sample in sampler.samples] == [now - 5]
    assert sampler.rate("session") is None


def test_retry_tiers_of_a_group_are_its_numbered_topics_only() -> None:
    connection = KafkaConnection(topic_prefix="t1.")
    names = [
        "t1.retry.credits.2",
        "t1.retry.credits.10",
        "t1.retry.credits.1",
        "t1.retry.credits.x.1",
        "retry.credits.1",
    ]
    assert retry_tiers_of(connection, "credits", names) == [
        "t1.retry.credits.1",
        "t1.retry.credits.2",
        "t1.retry.credits.10",
    ]
    assert retry_tiers_of(connection, "credits.x", names) == ["t1.retry.credits.x.1"]
