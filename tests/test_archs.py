"""The published architectures and the hidden-width parser."""

from __future__ import annotations

import pytest

from smartmixed_np.experiments.archs import ARCHITECTURES, get_architecture, parse_hidden


def test_published_ids():
    assert get_architecture(1) == (512,)
    assert get_architecture(2) == (512, 256, 128)
    assert get_architecture(4) == (256, 128)
    assert get_architecture(9) == (768, 512, 512, 256, 256)
    assert get_architecture(17) == get_architecture(9) + (128, 128, 64, 64, 32, 32, 16, 16)
    for arch_id in range(10, 18):  # each of 10-17 extends the previous one by a layer
        assert ARCHITECTURES[arch_id][:-1] == ARCHITECTURES[arch_id - 1] or arch_id == 10
    assert get_architecture(18) == (768, 512, 512, 256)


@pytest.mark.parametrize("bad", [0, 19, "two", None])
def test_unknown_ids(bad):
    with pytest.raises(ValueError, match="unknown architecture ID"):
        get_architecture(bad)


def test_parse_hidden():
    assert parse_hidden("512,256,128") == (512, 256, 128)
    assert parse_hidden("512-256") == (512, 256)
    assert parse_hidden(" 64 ") == (64,)
    for bad in ["", "a,b", "0", "64,-1"]:
        with pytest.raises(ValueError, match="positive integers"):
            parse_hidden(bad)
