import pytest

from ftqueue.exceptions import PayloadVerificationError
from ftqueue.settings import parse_size
from ftqueue.signing import Signer
from ftqueue.state import FilterError, parse_filter


def test_seal_and_open_round_trip():
    signer = Signer(b"k")
    assert signer.open("result", "t1", signer.seal("result", "t1", b"data")) == b"data"


@pytest.mark.parametrize("kind, owner, mutate", [
    ("result", "t2", lambda b: b),                 # replayed onto another task
    ("args", "t1", lambda b: b),                   # another kind of payload
    ("result", "t1", lambda b: b[:-1] + b"X"),     # one byte changed
    ("result", "t1", lambda b: b[40:]),            # signature stripped
])
def test_anything_else_is_refused(kind, owner, mutate):
    signer = Signer(b"k")
    blob = mutate(signer.seal("result", "t1", b"data"))
    with pytest.raises(PayloadVerificationError):
        signer.open(kind, owner, blob)


def test_rotation_accepts_listed_keys_only():
    old = Signer(b"old").seal("args", "t", b"x")
    assert Signer(b"new", (b"old",)).open("args", "t", old) == b"x"
    with pytest.raises(PayloadVerificationError):
        Signer(b"new").open("args", "t", old)


def test_unsigned_mode_refuses_signed_payloads_and_passes_plain_ones():
    assert Signer(None).open("args", "t", b"plain") == b"plain"
    with pytest.raises(PayloadVerificationError, match="no FTQUEUE_SECRET"):
        Signer(None).open("args", "t", Signer(b"k").seal("args", "t", b"x"))


@pytest.mark.parametrize("text, expected", [
    ("state=FAILED", ("state", "=", "FAILED")),
    ("state!=finished", ("state", "!=", "FINISHED")),
    ("name=a=b", ("name", "=", "a=b")),
])
def test_filters_parse(text, expected):
    assert parse_filter(text) == expected


@pytest.mark.parametrize("text", ["colour=red", "state=NAPPING", "no-operator", "=x"])
def test_bad_filters(text):
    with pytest.raises(FilterError):
        parse_filter(text)


@pytest.mark.parametrize("text, size", [("512M", 512 * 2**20), ("2G", 2 * 2**30),
                                        ("1048576", 2**20), ("1.5k", 1536)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1M", "5X"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)
