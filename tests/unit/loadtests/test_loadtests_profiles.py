"""Rate profiles produce the schedule they promise."""

import itertools

import pytest

from loadtests.profiles import ProfileError, parse_profile


def per_window(times, width, n):
    counts = [0] * n
    for t in times:
        counts[int(t // width)] += 1
    return counts


def test_constant_rate_is_exact_and_evenly_spaced():
    times = list(parse_profile("200").arrivals(2.0))
    assert len(times) == 400
    assert times[0] == 0.0
    assert times[1] == pytest.approx(0.005)
    assert max(b - a for a, b in zip(times, times[1:])) == pytest.approx(0.005)
    assert times[-1] < 2.0


def test_fractional_constant_rate():
    assert len(list(parse_profile("constant:2.5").arrivals(4.0))) == 10
    assert list(parse_profile("constant:0").arrivals(3.0)) == []


def test_step_profile_counts_per_step():
    p = parse_profile("step:100,200,400@2s")
    times = list(p.arrivals(6.0))
    counts = per_window(times, 2.0, 3)
    assert counts == [pytest.approx(200, abs=1), pytest.approx(400, abs=1),
                      pytest.approx(800, abs=1)]
    assert p.rate(1.0) == 100 and p.rate(5.9) == 400 and p.rate(60) == 400
    assert p.peak == 400


def test_step_within_a_step_is_evenly_spaced():
    times = [t for t in parse_profile("step:100,200@1s").arrivals(2.0) if 1.0 <= t < 2.0]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) == pytest.approx(0.005, abs=1e-6)
    assert max(gaps) == pytest.approx(0.005, abs=1e-6)


def test_ramp_profile_integrates_linearly():
    p = parse_profile("ramp:0,100@10s")
    times = list(p.arrivals(10.0))
    assert len(times) == pytest.approx(500, abs=1)        # area of the triangle
    first_half = sum(1 for t in times if t < 5.0)
    assert first_half == pytest.approx(125, abs=1)         # quarter of the area
    assert p.rate(20) == 100


def test_burst_profile_single_and_repeating():
    times = list(parse_profile("burst:100,1000@2s+0.5s").arrivals(4.0))
    assert len(times) == pytest.approx(100 * 3.5 + 1000 * 0.5, abs=1)
    in_burst = sum(1 for t in times if 2.0 <= t < 2.5)
    assert in_burst == pytest.approx(500, abs=1)
    rep = parse_profile("burst:10,110@1s+0.5s/2s")
    # bursts at 1 s and 3 s (the one at 5 s is past the end): 4 s at 10 + 1 s at 110
    assert len(list(rep.arrivals(5.0))) == pytest.approx(10 * 4 + 110 * 1, abs=1)
    assert rep.rate(3.2) == 110 and rep.rate(3.6) == 10


def test_arrivals_are_sorted_and_inside_the_duration():
    for spec in ("step:50,500@0.3s", "ramp:10,900@1s", "burst:20,800@0.2s+0.1s/0.4s"):
        times = list(parse_profile(spec).arrivals(1.5))
        assert times == sorted(times)
        assert all(0 <= t < 1.5 for t in times)


def test_worker_shares_interleave_to_the_whole_schedule():
    p = parse_profile("step:100,300@1s")
    full = list(p.arrivals(2.0))
    shares = [list(itertools.islice(p.arrivals(2.0), i, None, 3)) for i in range(3)]
    assert sorted(itertools.chain(*shares)) == full
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


@pytest.mark.parametrize("spec", ["step:100,200,400@2s", "ramp:1,2@3s", "burst:1,2@3s+1s",
                                  "burst:1,2@3s+1s/5s", "constant:7"])
def test_spec_round_trips(spec):
    assert parse_profile(parse_profile(spec).spec).spec == spec


def test_duration_units():
    assert parse_profile("step:1,2@500ms").rate(0.6) == 2


@pytest.mark.parametrize("spec", ["", "abc", "-5", "step:100", "step:@1s", "ramp:1@2s",
                                  "burst:1,2@3s", "wave:1,2@1s", "step:1,2@0s", "step:1,x@1s",
                                  "burst:1,2@1s+2s/1s", "nan", "inf"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(ProfileError):
        parse_profile(spec)


@pytest.mark.parametrize("spec,duration,mean", [
    ("0.0001", 1.0, 0.0001),                     # the rate asked for, not 1 request / 1 s
    ("0.5", 4.0, 0.5),
    ("step:50,100,200@2s", 6.0, (100 + 200 + 400) / 6),
    ("step:50,100,200@2s", 3.0, (100 + 100) / 3),
    ("ramp:100,1000@10s", 10.0, 550.0),
    ("ramp:100,1000@10s", 20.0, (5500 + 10000) / 20),
    ("burst:100,1000@2s+0.5s", 4.0, (100 * 3.5 + 1000 * 0.5) / 4),
    ("burst:100,1000@1s+0.2s/2s", 5.0, (100 * 4.6 + 1000 * 0.4) / 5),
])
def test_mean_rate_is_the_integral_of_the_profile(spec, duration, mean):
    profile = parse_profile(spec)
    assert profile.mean_rate(duration) == pytest.approx(mean)
    if mean * duration >= 50:  # the schedule agrees with the integral
        assert profile.expected_count(duration) == pytest.approx(mean * duration, abs=1)
