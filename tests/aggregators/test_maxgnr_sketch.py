"""MaxGNR's count sketch, computed row by row for speed, is bit-identical to the whole-block formula."""
import pytest
import torch

from projects.allinone.engine.aggregators import maxgnr
from projects.allinone.engine.aggregators.maxgnr import CountSketch


def block_sketch(sk, x, chunk):
    """The sketch as one ``index_add_`` along dim 1 of each ``(T, chunk)`` block, with the same hashes."""
    rows = x.reshape(-1, x.shape[-1])
    out = rows.new_zeros(rows.shape[0], sk.dim)
    for start in range(0, rows.shape[1], chunk):
        end = min(rows.shape[1], start + chunk)
        bucket, sign = sk._hash(start, end, rows.device)
        out.index_add_(1, bucket, rows[:, start:end] * sign.to(rows.dtype))
    return out.reshape(*x.shape[:-1], sk.dim)


@pytest.mark.parametrize('shape,chunk,cache', [((3, 5000), 1 << 22, 1 << 22), ((4, 5000), 1024, 1 << 22),
                                               ((3, 5000), 1024, 100), ((5000,), 777, 1 << 22)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_row_by_row_equals_the_block_formula(monkeypatch, shape, chunk, cache, dtype):
    monkeypatch.setattr(maxgnr, '_CHUNK', chunk)
    monkeypatch.setattr(maxgnr, '_CACHE_MAX', cache)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    sk = CountSketch(64, seed=3)
    for _ in range(2):                                  # uncached, then cached hashes
        got = sk(x)
        assert got.dtype == dtype and torch.equal(got, block_sketch(sk, x, chunk))
