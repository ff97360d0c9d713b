"""The sample ledger balances: trained + dropped + in flight = issued; nothing twice, nothing lost."""

import pytest

from rl_service.controller.ledger import LedgerError, SampleLedger


def test_balances_with_drops_and_in_flight():
    led = SampleLedger(samples_per_prompt=2)
    led.issue([0, 1, 2])
    led.mark_trained(["0/0", "0/1", "1/1"])
    led.mark_dropped([("1/0", "invalid_reward: returned nan")])
    c = led.check()
    assert c == {
        "samples/issued": 6,
        "samples/trained": 3,
        "samples/dropped_stale": 0,
        "samples/dropped_invalid": 1,
        "samples/in_flight": 2,
        "samples/lost": 0,
    }
    led.mark_dropped([("2/0", "stale"), ("2/1", "stale")])
    assert led.check()["samples/in_flight"] == 0
    assert led.counts()["samples/dropped_stale"] == 2


def test_trained_twice_is_an_error():
    led = SampleLedger(2)
    led.issue([0])
    led.mark_trained(["0/0"])
    with pytest.raises(LedgerError, match="trained twice"):
        led.mark_trained(["0/0"])
    with pytest.raises(LedgerError, match="already settled"):
        led.mark_dropped([("0/0", "stale")])


def test_partial_prompt_counts_as_lost():
    led = SampleLedger(3)
    led.issue([5])
    led.mark_trained(["5/0", "5/2"])
    assert led.counts()["samples/lost"] == 1
    with pytest.raises(LedgerError, match="1 samples lost"):
        led.check()


def test_unknown_and_reissued_ids_rejected():
    led = SampleLedger(2)
    led.issue([0])
    with pytest.raises(LedgerError, match="never issued"):
        led.mark_trained(["1/0"])
    with pytest.raises(LedgerError, match="never issued"):
        led.mark_trained(["0/2"])
    with pytest.raises(LedgerError, match="issued twice"):
        led.issue([0])
