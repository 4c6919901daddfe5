"""Content hashes of cached tensors (eebench/integrity.py) on a real model's state."""
from __future__ import annotations

import json

import pytest
import torch

from eebench import integrity


def test_a_state_with_0_dim_buffers_round_trips_and_a_flipped_value_is_caught(tmp_path):
    # BatchNorm's num_batches_tracked is a 0-dim int64 tensor, as in GRIT's trained checkpoint.
    state = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).state_dict()
    assert any(v.dim() == 0 for v in state.values())
    path = tmp_path / "model.safetensors"
    integrity.save_hashed(state, path)
    loaded, _ = integrity.load_verified(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)

    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start, _ = json.loads(data[8:8 + header_len])["1.num_batches_tracked"]["data_offsets"]
    data[8 + header_len + start] ^= 1  # the 0-dim counter's lowest byte
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="num_batches_tracked"):
        integrity.load_verified(path)
