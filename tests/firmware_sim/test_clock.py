"""The drifting crystal clock, with the time passed in."""

from __future__ import annotations

import pytest

from firmware_sim.clock import DAY_MS, Clock, Crystal

NOW = 1_700_000_000_000


def test_40_ppm_aged_a_year_moves_1261_to_1262_s() -> None:
    clock = Clock(NOW, crystal=Crystal(ppm=40)).age(NOW, 365 * DAY_MS)
    assert 1261_000 <= clock.offset_ms(NOW) <= 1262_000
    # ageing does not move the token by the span itself, only by the error
    assert clock.token_ms(NOW + 1000) - clock.token_ms(NOW) in (1000, 1001)


def test_running_drift_accumulates_in_real_time() -> None:
    clock = Clock(NOW, crystal=Crystal(ppm=-20))
    assert clock.offset_ms(NOW + DAY_MS) == -1728  # 20e-6 * 86400 s


def test_reproducible_same_settings_same_time() -> None:
    drift = Crystal(ppm=12.5, aging_ppm_per_year=3, temperature_mode="daily", temperature_c=18,
                    temperature_swing_c=9)
    a = Clock(NOW, crystal=drift, aging_start_ms=NOW).age(NOW, 100 * DAY_MS)
    b = Clock(NOW, crystal=drift, aging_start_ms=NOW).age(NOW, 100 * DAY_MS)
    for t in (NOW, NOW + 12_345, NOW + 7 * DAY_MS + 3):
        assert a.token_us(t) == b.token_us(t)
    # the persisted form reproduces it too
    assert Clock.from_dict(a.to_dict()).token_us(NOW + 99) == a.token_us(NOW + 99)


def test_split_ageing_equals_one_span() -> None:
    drift = Crystal(ppm=7, aging_ppm_per_year=2, temperature_mode="daily", temperature_c=30,
                    temperature_swing_c=12)
    one = Clock(NOW, crystal=drift).age(NOW, 10 * DAY_MS)
    two = Clock(NOW, crystal=drift).age(NOW, 4 * DAY_MS).age(NOW, 6 * DAY_MS)
    assert abs(one.offset_ms(NOW) - two.offset_ms(NOW)) <= 1


def test_temperature_is_always_slow() -> None:
    cold = Clock(NOW, crystal=Crystal(temperature_mode="constant", temperature_c=5)).age(
        NOW, DAY_MS)
    assert cold.offset_ms(NOW) == pytest.approx(-0.034 * 400 * 86.4, abs=1)
    daily = Clock(NOW, crystal=Crystal(temperature_mode="daily", temperature_c=25,
                                       temperature_swing_c=10))
    assert daily.age(NOW, DAY_MS).offset_ms(NOW) == pytest.approx(-0.034 * 50 * 86.4, abs=1)
    at_turnover = Crystal(temperature_mode="constant", temperature_c=25)
    assert Clock(NOW, crystal=at_turnover).age(NOW, DAY_MS).offset_ms(NOW) == 0


def test_aging_grows_the_error() -> None:
    clock = Clock(NOW, crystal=Crystal(aging_ppm_per_year=1), aging_start_ms=NOW)
    year = 365 * DAY_MS + DAY_MS // 4
    first = clock.age(NOW, year).offset_ms(NOW)
    second = clock.age(NOW, 2 * year).offset_ms(NOW) - first
    assert first == pytest.approx(15_778, abs=2)  # mean 0.5 ppm over a year
    assert second == pytest.approx(3 * first, abs=3)


def test_freeze_holds_and_resumes_from_held_value() -> None:
    clock = Clock(NOW, crystal=Crystal(ppm=100)).set_time(NOW, 2_000_000_000_000).hold(
        NOW, "freeze")
    assert clock.token_ms(NOW + 3_600_000) == 2_000_000_000_000
    resumed = clock.release(NOW + 3_600_000, "freeze")
    assert resumed.token_ms(NOW + 3_600_000) == 2_000_000_000_000
    assert resumed.token_ms(NOW + 3_610_000) == 2_000_000_010_001  # 10 s at +100 ppm


def test_two_holds_need_two_releases() -> None:
    clock = Clock(NOW).hold(NOW, "freeze").hold(NOW + 5, "battery")
    assert clock.release(NOW + 10, "freeze").token_ms(NOW + 1000) == NOW
    assert clock.release(NOW + 10, "freeze").release(NOW + 10, "battery").token_ms(NOW + 1010) == (
        NOW + 1000
    )


def test_adjust_steps_the_clock() -> None:
    clock = Clock(NOW).adjust(NOW, -90_000)
    assert clock.offset_ms(NOW + 5) == -90_000
    assert Clock(NOW).hold(NOW, "freeze").adjust(NOW, 5).token_ms(NOW + 99) == NOW + 5


def test_bad_drift_rejected() -> None:
    with pytest.raises(ValueError):
        Crystal(ppm=float("nan"))
    with pytest.raises(ValueError):
        Crystal(temperature_mode="weird")  # type: ignore[arg-type]
