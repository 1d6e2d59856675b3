"""The restricted unpickler's memory bounds: tiny pickles that ask for huge allocations are refused
before the memory is taken, with an error naming the file."""
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

from gcvideo.models.safe_pickle import UnsafePickleError, default_allocation_limit, safe_pickle_load
from gcvideo.models.weights_file import load_weights_object
from gcvideo.utils.io import CheckpointError


def _bytearray_bomb(n: int) -> bytes:
    """``bytearray(n)`` as a protocol-2 pickle: the callable is on the allow-list, the size is not."""
    return b"\x80\x02c__builtin__\nbytearray\nJ" + struct.pack("<i", n) + b"\x85R."


def _reconstruct_bomb(n: int) -> bytes:
    """``numpy.core.multiarray._reconstruct(ndarray, (n,), 'f8')``: an n-element array from a few bytes."""
    mod = b"numpy._core.multiarray" if b"numpy._core" in pickle.dumps(np.zeros(1), protocol=2) else \
        b"numpy.core.multiarray"
    return (b"\x80\x02c" + mod + b"\n_reconstruct\ncnumpy\nndarray\nJ" + struct.pack("<i", n)
            + b"\x85cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R\x87R.")


def _ndarray_bomb(n: int) -> bytes:
    """``numpy.ndarray((n,), 'f8')`` called directly."""
    return (b"\x80\x02cnumpy\nndarray\nJ" + struct.pack("<i", n) + b"\x85cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88"
            b"\x87R\x86R.")


def _codec_call(codec: bytes) -> bytes:
    """``_codecs.encode("ab", codec)``: only latin1 (how protocol-2 pickles store bytes) is allowed;
    other codecs (hex, base64, ...) can grow data through the memo without bound."""
    return (b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX" + struct.pack("<I", len(codec)) + codec
            + b"\x86R.")


def test_bytearray_bomb_is_refused_before_allocating(tmp_path):
    data = _bytearray_bomb(2_000_000_000)
    assert len(data) < 64
    path = tmp_path / "bomb.pkl"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"bomb\.pkl.*bytearray\(2000000000\).*allocate"):
            load_weights_object(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000, peak  # far below the 2 GB asked for


@pytest.mark.parametrize("make", [_reconstruct_bomb, _ndarray_bomb])
def test_array_bombs_are_refused(make):
    with pytest.raises(UnsafePickleError, match="allocate"):
        safe_pickle_load(make(500_000_000))  # 4 GB of float64 from ~100 bytes
    # the same constructors with a size the file can hold still work
    out = safe_pickle_load(make(10))
    assert out.shape == (10,) and out.dtype == np.float64


def test_codecs_other_than_latin1_are_refused():
    with pytest.raises(UnsafePickleError, match="hex"):
        safe_pickle_load(_codec_call(b"hex"))
    assert safe_pickle_load(_codec_call(b"latin1")) == b"ab"


def test_real_weight_pickles_stay_within_the_bound():
    blobs = {"blobs": {f"w{i}": np.random.rand(64, 32, 1, 3, 3).astype(np.float32) for i in range(8)}}
    for proto in (2, 4, 5):
        data = pickle.dumps(blobs, protocol=proto)
        out = safe_pickle_load(data)
        np.testing.assert_array_equal(out["blobs"]["w3"], blobs["blobs"]["w3"])
    # an explicit bound below the arrays' size refuses the file
    with pytest.raises(UnsafePickleError, match="allocate"):
        safe_pickle_load(pickle.dumps(blobs, protocol=2), max_bytes=len(pickle.dumps(blobs, protocol=2)) // 4)
    assert default_allocation_limit(1000) == 2000 + (1 << 20)
