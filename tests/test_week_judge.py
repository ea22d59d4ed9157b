"""The judge of the week-outage harness (tests/virtual_cluster.py) finds what it is there to find.

Pure: hand-made backend records and simulator events. One clean session passes; each way of
losing or mangling it is reported.
"""

from __future__ import annotations

import copy

import pytest

from gateway.simulator.slave import SlaveEvent
from tests.ocpp_rpc_peer import Record
from tests.virtual_cluster import IDENTITY, judge

EVENTS = [SlaveEvent("plug", 1, 1, 1000, 0.0), SlaveEvent("unplug", 1, 1, 1500, 600.0)]


def call(method: str, message_id: str, params: dict) -> Record:
    return {"type": "call", "identity": IDENTITY, "method": method, "messageId": message_id, "params": params}


def clean() -> tuple[list[Record], list[Record]]:
    mv = {"connectorId": 1, "transactionId": 5, "meterValue": [
        {"timestamp": "2026-01-05T10:01:00.000Z", "sampledValue": [{"value": "1100"}]},
        {"timestamp": "2026-01-05T10:02:00.000Z", "sampledValue": [{"value": "1200"}]},
    ]}
    calls = [
        call("StartTransaction", "a", {"connectorId": 1, "idTag": "T", "meterStart": 1000, "timestamp": "2026-01-05T10:00:00.000Z"}),
        call("MeterValues", "b", mv),
        call("StopTransaction", "c", {"transactionId": 5, "meterStop": 1500, "timestamp": "2026-01-05T10:10:00.000Z"}),
    ]
    return calls, [{"type": "result", "messageId": "a", "result": {"transactionId": 5}}]


def test_a_clean_session_and_an_identical_resend_pass() -> None:
    calls, results = clean()
    assert judge(calls + [copy.deepcopy(calls[1])], results, EVENTS, samples=2) == []


@pytest.mark.parametrize("damage", ["stop lost", "sample lost", "resend differs", "samples reversed", "second session", "wrong meter"])
def test_each_loss_or_mangling_is_reported(damage: str) -> None:
    calls, results = clean()
    samples = 2
    if damage == "stop lost":
        del calls[2]
    elif damage == "sample lost":
        samples = 3
    elif damage == "resend differs":
        resend = copy.deepcopy(calls[2])
        resend["params"]["meterStop"] = 1600
        calls.append(resend)
    elif damage == "samples reversed":
        calls[1]["params"]["meterValue"].reverse()
    elif damage == "second session":
        calls.insert(2, call("StartTransaction", "d", {**calls[0]["params"], "timestamp": "2026-01-05T10:05:00.000Z"}))
        results.append({"type": "result", "messageId": "d", "result": {"transactionId": 6}})
    else:
        calls[0]["params"]["meterStart"] = 990
    assert judge(calls, results, EVENTS, samples) != []
