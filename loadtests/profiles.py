"""Arrival-rate profiles and the open-loop schedule they imply.

An open-loop test is defined by *when* each request should start, not by how
fast the server answers.  A profile is a rate function rate(t) in requests/s;
the schedule places arrival k where the integral of the rate reaches k, so a
step from 100 to 200 req/s yields exactly 100 and then 200 starts per second.
Specs are short strings so they can cross a process boundary and a CLI:

    200                       constant 200 req/s
    constant:200              the same
    step:100,200,400@2s       each rate held 2 s, the last until the end
    ramp:100,1000@10s         linear from 100 to 1000 over 10 s, then held
    burst:100,1000@2s+0.5s    100 req/s with 1000 req/s from 2 s for 0.5 s
    burst:100,1000@1s+0.2s/2s the same burst repeated every 2 s
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

MAX_RATE = 1_000_000.0


class ProfileError(ValueError):
    """A profile spec that cannot be understood."""


def _seconds(text: str) -> float:
    text = text.strip()
    try:
        if text.endswith("ms"):
            value = float(text[:-2]) / 1000.0
        else:
            value = float(text[:-1] if text.endswith("s") else text)
    except ValueError:
        raise ProfileError(f"not a duration: {text!r} (e.g. 2s, 500ms)") from None
    if not math.isfinite(value) or value < 0:
        raise ProfileError(f"duration must be >= 0: {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ProfileError(f"not a rate: {text!r}") from None
    if not math.isfinite(value) or value < 0 or value > MAX_RATE:
        raise ProfileError(f"rate must be between 0 and {MAX_RATE:g}: {text!r}")
    return value


@dataclass(frozen=True)
class Profile:
    """A named rate function; `spec` round-trips through parse_profile.

    `integral(t)` is the exact number of requests the rate asks for in [0, t],
    so a report can state the rate asked for rather than infer it from a
    schedule that rounds to whole requests (0.0001 req/s for 1 s is 1 start).
    """

    spec: str
    rate: Callable[[float], float]
    peak: float
    constant: float | None = None
    integral: Callable[[float], float] | None = None
    length: float = 0.0  # seconds until the whole shape has played (each step held, a burst ended)

    def check_fits(self, duration: float) -> None:
        """Refuse a run that would cut the profile short or send no request at all:
        either silently measures something else than what was asked for."""
        if duration < self.length - 1e-9:
            raise ProfileError(
                f"--duration {duration:g} s is shorter than the profile {self.spec} "
                f"({self.length:g} s): the rest of it would never run; "
                f"use --duration {self.length:g} or more")
        if self.peak <= 0 or self.integral(duration) <= 1e-9:
            raise ProfileError(f"the profile {self.spec} sends no request in {duration:g} s")

    def arrivals(self, duration: float, resolution: float = 0.001) -> Iterator[float]:
        """Scheduled start offsets (seconds from 0) of every request before `duration`."""
        if self.constant is not None:
            if self.constant <= 0:
                return
            n = math.ceil(duration * self.constant - 1e-9)
            for k in range(n):
                yield k / self.constant
            return
        steps = math.ceil(duration / resolution - 1e-9)
        acc = 0.0  # expected arrivals before the current step
        k = 0
        for i in range(steps):
            t0 = i * resolution
            t1 = min(duration, t0 + resolution)
            r = self.rate((t0 + t1) / 2.0)
            if r <= 0:
                continue
            acc_end = acc + r * (t1 - t0)
            while k < acc_end - 1e-9:
                t = t0 + (k - acc) / r
                if t >= duration:
                    return
                yield t
                k += 1
            acc = acc_end

    def expected_count(self, duration: float) -> int:
        return sum(1 for _ in self.arrivals(duration))

    def mean_rate(self, duration: float) -> float:
        """The rate asked for, averaged over the first `duration` seconds."""
        if duration <= 0:
            return self.rate(0.0)
        if self.constant is not None:
            return self.constant
        return self.integral(duration) / duration


def _clamp(t: float, low: float, high: float) -> float:
    return min(max(t, low), high)


def constant(rate: float) -> Profile:
    return Profile(f"constant:{rate:g}", lambda t: rate, rate, constant=rate,
                   integral=lambda t: rate * max(t, 0.0))


def step(rates: list[float], every: float) -> Profile:
    if not rates or every <= 0:
        raise ProfileError("step needs at least one rate and a step length > 0")
    last = len(rates) - 1

    def rate(t: float) -> float:
        return rates[min(int(t / every), last)]

    def integral(t: float) -> float:
        held = [_clamp(t - i * every, 0.0, every) for i in range(last)]
        return sum(r * h for r, h in zip(rates, held)) + rates[last] * max(0.0, t - last * every)

    spec = "step:" + ",".join(f"{r:g}" for r in rates) + f"@{every:g}s"
    return Profile(spec, rate, max(rates), integral=integral, length=len(rates) * every)


def ramp(start: float, end: float, over: float) -> Profile:
    if over <= 0:
        raise ProfileError("ramp needs a length > 0")

    def rate(t: float) -> float:
        return end if t >= over else start + (end - start) * t / over

    def integral(t: float) -> float:
        u = _clamp(t, 0.0, over)
        return start * u + (end - start) * u * u / (2 * over) + end * max(0.0, t - over)

    return Profile(f"ramp:{start:g},{end:g}@{over:g}s", rate, max(start, end),
                   integral=integral, length=over)


def burst(base: float, peak: float, at: float, length: float,
          every: float | None = None) -> Profile:
    if length <= 0 or (every is not None and every <= length):
        raise ProfileError("burst needs a length > 0 and a period longer than it")

    def rate(t: float) -> float:
        if t < at:
            return base
        phase = (t - at) % every if every else t - at
        return peak if phase < length else base

    def in_bursts(t: float) -> float:
        """Seconds of [0, t] spent at the peak."""
        u = max(0.0, t - at)
        if not every:
            return min(u, length)
        periods, phase = divmod(u, every)
        return periods * length + min(phase, length)

    def integral(t: float) -> float:
        return base * max(t, 0.0) + (peak - base) * in_bursts(t)

    spec = f"burst:{base:g},{peak:g}@{at:g}s+{length:g}s" + (f"/{every:g}s" if every else "")
    return Profile(spec, rate, max(base, peak), integral=integral, length=at + length)


def parse_profile(spec: str) -> Profile:
    """Build a Profile from its spec string (see the module docstring)."""
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep:
        return constant(_rate(spec))
    kind = kind.strip().lower()
    if kind == "constant":
        return constant(_rate(rest))
    rates_text, at_sep, timing = rest.partition("@")
    if not at_sep:
        raise ProfileError(f"{kind} profile needs '@': {spec!r}")
    rates = [_rate(r) for r in rates_text.split(",") if r.strip()]
    if kind == "step":
        return step(rates, _seconds(timing))
    if kind == "ramp":
        if len(rates) != 2:
            raise ProfileError(f"ramp needs two rates, e.g. ramp:100,1000@10s: {spec!r}")
        return ramp(rates[0], rates[1], _seconds(timing))
    if kind == "burst":
        if len(rates) != 2 or "+" not in timing:
            raise ProfileError(f"burst needs base,peak@start+length: {spec!r}")
        window, _, every = timing.partition("/")
        at, _, length = window.partition("+")
        return burst(rates[0], rates[1], _seconds(at), _seconds(length),
                     _seconds(every) if every else None)
    raise ProfileError(f"unknown profile kind {kind!r} (constant, step, ramp, burst)")
