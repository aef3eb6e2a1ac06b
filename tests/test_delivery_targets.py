"""Target bookkeeping (pure): the key an outbox row's ``done_targets`` stores for a URL."""

from __future__ import annotations

import pytest

from notifier.channels.targets import url_key


@pytest.mark.parametrize(
    "url",
    ["json://user:s3cret@127.0.0.1/", "slack://T1/B2/t0k3n/#ops"],
    ids=["basic-auth", "slack-token"],
)
def test_the_key_is_short_stable_and_holds_no_secret(url: str) -> None:
    key = url_key(url)
    assert key == url_key(url)
    assert key != url_key(url + "x")
    assert len(key) == 13
    assert "s3cret" not in key
    assert "t0k3n" not in key
