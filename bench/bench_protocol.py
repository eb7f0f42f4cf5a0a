"""A full PRESS round trip in-process: host encodes, device decodes and encodes the reply,
host decodes. Target (issue 2): at least 20,000 round trips a second on one core."""

from __future__ import annotations

import statistics
import time

from protocol import (
    DeviceConnection,
    HostConnection,
    PressReply,
    PressRequest,
    ReplyReceived,
    RequestReceived,
)

ROUNDS = 7
PER_ROUND = 20_000
TARGET = 20_000


def round_trips(n: int) -> float:
    host, device = HostConnection(), DeviceConnection()
    request, reply = PressRequest(), PressReply("287082", 17)
    started = time.perf_counter()
    for _ in range(n):
        _, data = host.send(request)
        device.receive_data(data)
        event = device.next_event()
        assert isinstance(event, RequestReceived)
        host.receive_data(device.send(event, reply))
        answer = host.next_event()
        assert isinstance(answer, ReplyReceived)
    return n / (time.perf_counter() - started)


def main() -> None:
    round_trips(2_000)  # warm up
    rates = [round_trips(PER_ROUND) for _ in range(ROUNDS)]
    median = statistics.median(rates)
    print(
        f"PRESS round trips in-process: median {median:,.0f}/s over {ROUNDS} runs of {PER_ROUND:,}"
    )
    print(f"   min {min(rates):,.0f}/s, max {max(rates):,.0f}/s; {1e6 / median:.1f} us each")
    verdict = "met" if median >= TARGET else "MISSED"
    print(f"   target {TARGET:,}/s: {verdict} ({median / TARGET:.2f}x)")
