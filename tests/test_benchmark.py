"""Tests of the FPN vs VT-FPN benchmark (vtseg.analysis.benchmark, tools/benchmark.py) and of
the inference fast paths it measures. Functional only: nothing here asserts a timing."""
import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.analysis import FlopAnalyzer

from vtseg.analysis.benchmark import (
    BenchmarkSettings,
    format_table,
    interleaved_times,
    paired_speedup,
    parse_size,
    peak_memory,
    run_benchmark,
    save_results,
    scaling_exponents,
)
from vtseg.models import VTFPN
from vtseg.models.layers import FilterTokenizer, Projector

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(sizes=[(64, 64)], modes=['neck'], warmup=0, repeats=1, batch=2,
            throughput_sizes=[(64, 64)], matmul_size=64, config_dir=str(ROOT / 'configs'))


def test_parse_size():
    assert parse_size('800x1216') == (800, 1216)
    assert parse_size('473X473') == (473, 473)
    for bad in ['800', '800x', 'x5', '0x4', '-3x4', 'axb']:
        with pytest.raises(ValueError, match='HEIGHTxWIDTH'):
            parse_size(bad)


@pytest.mark.parametrize('field,value,match', [
    ('repeats', 0, 'repeats must be an integer >= 1'),
    ('warmup', -1, 'warmup must be an integer >= 0'),
    ('modes', ['neck', 'r34'], 'choose among'),
    ('sizes', [], 'sizes is empty'),
    ('threads', 0, 'threads must be a positive integer'),
    ('clock', 'tsc', 'clock must be one of'),
    ('clock', 'cpu', 'single-threaded CPU runs only'),  # threads not set to 1
])
def test_settings_reject_bad_values(field, value, match):
    settings = BenchmarkSettings(**{**TINY, field: value})
    with pytest.raises(ValueError, match=match):
        settings.check()


def test_missing_config_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'fpn_r50_coco-stuff164k\.py.*--config-dir'):
        run_benchmark(BenchmarkSettings(**{**TINY, 'config_dir': str(tmp_path)}),
                      log=lambda _: None)


@pytest.mark.parametrize('clock', ['wall', 'cpu'])
def test_interleaved_times_alternates_order(clock):
    calls = []
    fns = {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}
    times = interleaved_times(fns, warmup=1, repeats=3, device='cpu', clock=clock)
    assert calls == ['a', 'b', 'a', 'b', 'b', 'a', 'a', 'b']  # warm-up, AB, BA, AB
    assert {k: len(v) for k, v in times.items()} == {'a': 3, 'b': 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_peak_memory_sees_temporary_allocations():
    mib = 2 ** 20

    def allocate():  # 64 MiB, then 32 MiB more while it lives, both written (resident)
        x = torch.ones(64 * mib // 4)
        y = torch.ones(32 * mib // 4)
        return float(x[-1] + y[-1])

    peak = peak_memory(allocate)
    assert 96 * mib <= peak['tensors'] <= 96 * mib + 64  # + the 1-element sum's result
    if Path('/proc/self/clear_refs').exists():
        assert 90 * mib <= peak['rss'] <= 130 * mib
    nothing = peak_memory(lambda: None)
    assert nothing['tensors'] == 0 and (nothing['rss'] is None or nothing['rss'] < 8 * mib)


def test_benchmark_end_to_end(tmp_path):
    logs = []
    results = run_benchmark(BenchmarkSettings(**TINY), log=logs.append)
    assert set(results) == {'machine', 'settings', 'matmul_gmacs', 'load_average',
                            'measurements'}
    assert {'cpu', 'logical_cores', 'torch', 'threads', 'device'} <= set(results['machine'])
    assert results['matmul_gmacs']['peak'] > 0
    rows = results['measurements']
    assert [(m['neck'], m['batch']) for m in rows] == [
        ('FPN', 1), ('VT-FPN', 1), ('FPN', 2), ('VT-FPN', 2)]
    for m in rows:
        assert m['mode'] == 'neck' and m['size'] == [64, 64] and len(m['times_s']) == 1
        assert set(m['stats']) == {'median', 'q1', 'q3', 'min', 'max'}
        assert m['config'].endswith('fpn_r50_coco-stuff164k.py')
        assert isinstance(m['peak_memory_bytes'], int) and m['peak_memory_bytes'] > 0
        assert isinstance(m['peak_rss_bytes'], int)
    fpn, vt = rows[0], rows[1]
    assert fpn['macs'] > 0 and vt['macs'] > 0 and fpn['macs'] != vt['macs']
    assert rows[2]['macs'] == fpn['macs'] and rows[3]['macs'] == vt['macs']  # per image

    paths = save_results(results, tmp_path / 'out')
    loaded = json.loads(paths['json'].read_text())
    assert loaded['measurements'][1]['neck'] == 'VT-FPN'
    table = paths['table'].read_text()
    assert '| neck | 64x64 | 1 |' in table and '| neck | 64x64 | 2 |' in table
    assert 'speed-up' in table and 'fp32 matmul peak' in table
    assert paths['plot'].read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert table.strip() == format_table(results)


def test_paired_speedup_uses_back_to_back_pairs():
    # Round 2 ran while the machine was busy: both times tripled, the ratio did not move.
    fpn, vt = [5.0, 15.0, 5.5], [1.0, 3.0, 1.1]
    assert paired_speedup(fpn, vt) == pytest.approx(5.0)
    assert statistics.median(fpn) / statistics.median(vt) == pytest.approx(5.0)
    assert paired_speedup([4.0, 8.0, 9.0], [1.0, 1.0, 3.0]) == pytest.approx(4.0)


def test_scaling_exponent_of_linear_times():
    def row(neck, px, t):
        return dict(mode='neck', neck=neck, size=[px, 1], batch=1, stats=dict(median=t))
    results = dict(measurements=[row('FPN', 100, 1.0), row('FPN', 400, 4.0),
                                 row('VT-FPN', 100, 1.0), row('VT-FPN', 400, 2.0)])
    slopes = scaling_exponents(results)
    assert slopes[('neck', 'FPN')] == pytest.approx(1.0)
    assert slopes[('neck', 'VT-FPN')] == pytest.approx(0.5)


@pytest.mark.slow  # builds and runs two whole R-50 segmentors (at 64x64)
def test_cli_writes_table_json_and_plot(tmp_path):
    out = tmp_path / 'bench'
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools/benchmark.py'), '--models', 'neck,r50',
         '--sizes', '64x64', '--repeats', '1', '--warmup', '0', '--batch', '1',
         '--matmul-size', '64', '--threads', '1', '--clock', 'cpu', '--out-dir', str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '| R-50 | 64x64 | 1 |' in proc.stdout and '| neck | 64x64 | 1 |' in proc.stdout
    assert 'FPN CPU ms' in proc.stdout and 'process CPU time' in proc.stdout
    data = json.loads((out / 'benchmark.json').read_text())
    assert {m['mode'] for m in data['measurements']} == {'neck', 'r50'}
    r50 = [m for m in data['measurements'] if m['mode'] == 'r50']
    # Whole model: backbone + neck + head, VT-FPN cheaper by the neck difference only.
    assert r50[0]['macs'] > r50[1]['macs'] > 0
    assert (out / 'benchmark_latency.png').stat().st_size > 0


def _cli():
    spec = importlib.util.spec_from_file_location('benchmark_cli', ROOT / 'tools/benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    cli = _cli()
    assert cli.main(['--sizes', '64']) == 2
    assert "size '64' is not HEIGHTxWIDTH" in capsys.readouterr().err
    assert cli.main(['--clock', 'cpu']) == 2  # without --threads 1
    assert '--threads 1' in capsys.readouterr().err
    bad = tmp_path / 'bad.json'
    bad.write_text('{"measurements": []}')
    assert cli.main(['--from-json', str(bad), '--out-dir', str(tmp_path)]) == 2
    assert 'cannot read' in capsys.readouterr().err


def test_cli_redraws_from_json(tmp_path, capsys):
    results = run_benchmark(BenchmarkSettings(**{**TINY, 'memory': False}), log=lambda _: None)
    saved = tmp_path / 'saved.json'
    saved.write_text(json.dumps(results))
    assert _cli().main(['--from-json', str(saved), '--out-dir', str(tmp_path / 'redraw')]) == 0
    out = capsys.readouterr().out
    assert '| neck | 64x64 | 1 |' in out and 'n/a / n/a' in out  # no memory measured
    assert (tmp_path / 'redraw' / 'benchmark_latency.png').stat().st_size > 0


# ----------------------------------------------- the inference fast paths equal the plain ones
def _randomize_bn(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)


@pytest.mark.parametrize('norm_cfg', [None, dict(type='BN')])
def test_vtfpn_inference_path_matches_module_path(norm_cfg):
    """Under no_grad VT-FPN runs its 1x1 laterals as GEMMs (BN folded) and projects in place;
    with a hook on the laterals and autograd on it runs the modules and out-of-place
    projections. Both give the same outputs, and the inputs are left untouched."""
    torch.manual_seed(0)
    channels = [8, 16, 32, 64]
    neck = VTFPN(channels, 12, 5, num_tokens=4, token_channels=16, num_heads=4,
                 norm_cfg=norm_cfg)
    _randomize_bn(neck)
    neck.eval()
    inputs = [torch.randn(2, c, 19 // s + 1, 27 // s + 1) for c, s in zip(channels, [1, 2, 4, 8])]
    copies = [x.clone() for x in inputs]
    with torch.no_grad():
        fast = neck(inputs)
    seen = []
    handles = [m.register_forward_hook(lambda *_: seen.append(1)) for m in neck.lateral_convs]
    plain = neck(inputs)  # autograd records: module path, out-of-place projectors
    for h in handles:
        h.remove()
    assert len(seen) == len(channels)  # the hooked laterals ran as modules
    assert plain[0].requires_grad
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for x, c in zip(inputs, copies):
        assert torch.equal(x, c)


def test_projector_inplace_only_without_autograd():
    torch.manual_seed(0)
    proj = Projector(6, 10)
    x, t = torch.randn(2, 6, 5, 7), torch.randn(2, 3, 10)
    ref = proj(x, t)
    x_copy = x.clone()
    with torch.no_grad():
        out = proj(x_copy, t, inplace=True)
    assert out.data_ptr() == x_copy.data_ptr()  # written into x's memory
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    kept = x.clone()
    proj(kept, t, inplace=True)  # autograd records: ignored
    assert torch.equal(kept, x)


def test_fast_paths_count_the_same_macs():
    """FLOP counting traces the module path; the tokenizer's GEMM counts every image."""
    tok = FilterTokenizer(16, 4)
    macs = [FlopAnalyzer(tok, torch.randn(b, 16, 9, 11)).total() for b in (1, 3)]
    # logits + weighted pooling; mmengine counts einsums to 3-4 significant digits
    assert macs[0] == pytest.approx(2 * 16 * 4 * 9 * 11, rel=1e-3)
    assert macs[1] == pytest.approx(3 * macs[0], rel=1e-3)
    neck = VTFPN([8, 16], 12, 2, num_tokens=4, token_channels=16, num_heads=4).eval()
    analyzer = FlopAnalyzer(neck, ([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)],))
    assert analyzer.by_module()['lateral_convs.0'] == 8 * 12 * 8 * 8
