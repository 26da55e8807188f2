"""Tests of the FPN vs VT-FPN benchmark (vtseg.analysis.benchmark, tools/benchmark.py).
Functional only: nothing here asserts a timing."""
import importlib.util
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_command

from vtseg.analysis.benchmark import (
    CPU_ISA_ENV,
    STAGES,
    BenchmarkSettings,
    best_forms,
    floor_fractions,
    format_table,
    interleaved_times,
    paired_speedup,
    parse_size,
    peak_memory,
    run_benchmark,
    save_results,
    scaling_exponents,
    stage_times,
)
from vtseg.models.layers.token_pixel_kernels import kernels_isa, kernels_threaded

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(sizes=[(64, 64)], modes=['neck'],
            forms=['eager', 'channels_last', 'optimized', 'onnxruntime'],
            warmup=0, repeats=1, batch=2, throughput_sizes=[(64, 64)], train_sizes=[],
            matmul_size=64, config_dir=str(ROOT / 'configs'))


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
    ('forms', ['eager', 'jit'], 'choose among'),
    ('forms', [], 'choose among'),
    ('train_forms', ['optimized'], 'choose among'),
    ('device', 'tpu', 'use cpu or cuda'),
    ('sizes', [], 'sizes is empty'),
    ('threads', 0, 'threads must be a positive integer'),
    ('clock', 'tsc', 'clock must be one of'),
    ('clock', 'cpu', 'single-threaded CPU runs only'),  # threads not set to 1
    ('host_memory', 'jemalloc', 'host_memory must be one of'),
    ('cpu_isa', 'sse', 'cpu_isa must be one of'),
    ('cpu_isa', 'avx2', 'ONNX Runtime .* cannot be capped'),  # TINY times onnxruntime
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
    assert {'cpu', 'cpu_isa', 'logical_cores', 'torch', 'threads', 'device',
            'host_memory_reused', 'torch_cpu_capability', 'vtseg_kernels'} \
        <= set(results['machine'])
    assert results['machine']['vtseg_kernels'] == kernels_isa()
    assert results['matmul_gmacs']['peak'] > 0
    forms = TINY['forms']
    torch_forms = [f for f in forms if f != 'onnxruntime']
    # Per batch: both necks in every form, then VT-FPN's lateral convs alone (its floor,
    # timed in the same rounds) in every PyTorch form, then its stages timed in place in
    # the optimised form.
    assert [(m['kind'], m['neck'], m['form'], m['batch']) for m in results['measurements']] \
        == [row for b in (1, 2) for row in
            [('inference', n, f, b) for n in ('FPN', 'VT-FPN') for f in forms]
            + [('floor', 'VT-FPN', f, b) for f in torch_forms]
            + [('stage', 'VT-FPN', 'optimized', b)] * (len(STAGES) + 1)]
    stage_rows = [m for m in results['measurements'] if m['kind'] == 'stage']
    assert [m['stage'] for m in stage_rows] == [*STAGES, 'total'] * 2
    rows = [m for m in results['measurements'] if m['kind'] == 'inference']
    floor_rows = [m for m in results['measurements'] if m['kind'] == 'floor']
    for m in rows:
        assert m['kind'] == 'inference' and m['mode'] == 'neck' and m['size'] == [64, 64]
        assert len(m['times_s']) == 1
        assert set(m['stats']) == {'median', 'q1', 'q3', 'min', 'max'}
        assert m['config'].endswith('fpn_r50_coco-stuff164k.py')
        if m['form'] == 'onnxruntime':  # outside PyTorch's allocator
            assert m['peak_memory_bytes'] is None
        else:
            assert isinstance(m['peak_memory_bytes'], int) and m['peak_memory_bytes'] > 0
        assert isinstance(m['peak_rss_bytes'], int)
    fpn, vt = rows[0], rows[len(forms)]
    assert fpn['macs'] > 0 and vt['macs'] > 0 and fpn['macs'] != vt['macs']
    # Both necks run the same lateral 1x1 convs: VT-FPN's floor is work FPN does too.
    assert fpn['lateral_macs'] == vt['lateral_macs'] > 0
    assert all(m['macs'] == (fpn if m['neck'] == 'FPN' else vt)['macs'] for m in rows)
    assert all(m['macs'] == m['lateral_macs'] == vt['lateral_macs'] and len(m['times_s']) == 1
               for m in floor_rows)
    # The stages' MACs add up to the neck's; the lateral convs' are the floor's (and their
    # eval BatchNorms, which the optimisation step folds).
    for b in (1, 2):
        by_stage = {m['stage']: m for m in stage_rows if m['batch'] == b}
        assert vt['lateral_macs'] < by_stage['lateral convs']['macs'] < 1.01 * vt['lateral_macs']
        assert by_stage['total']['macs'] == vt['macs']
        assert sum(by_stage[s]['macs'] for s in STAGES[:-1]) == pytest.approx(vt['macs'],
                                                                            rel=1e-3)
        assert all(by_stage[s]['macs'] > 0 for s in STAGES[:-1])
        assert by_stage['other']['macs'] is None
        assert sum(by_stage[s]['times_s'][0] for s in STAGES) == pytest.approx(
            by_stage['total']['times_s'][0])

    best = best_forms(results)
    assert set(best) == {('inference', 'neck', (64, 64), 1), ('inference', 'neck', (64, 64), 2)}
    for b in best.values():
        assert b['fpn']['stats']['median'] == min(
            m['stats']['median'] for m in rows
            if m['neck'] == 'FPN' and m['batch'] == b['fpn']['batch'])
        assert b['speedup'] == pytest.approx(b['fpn']['times_s'][0] / b['vt']['times_s'][0])

    paths = save_results(results, tmp_path / 'out')
    loaded = json.loads(paths['json'].read_text())
    assert loaded['measurements'][len(forms)]['neck'] == 'VT-FPN'
    table = paths['table'].read_text()
    assert 'Best against best' in table and 'VT-FPN floor' in table
    for form in forms:
        assert f'| neck | 64x64 | 1 | {form} |' in table
    assert 'torch.matmul fp32 rate' in table and results['machine']['cpu'] in table
    # which instruction set each side's kernels ran with: PyTorch's and vtseg's
    assert (f'PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}, vtseg '
            f'kernels {kernels_isa()})') in table
    assert results['machine']['vtseg_kernels_threaded'] == kernels_threaded()
    unthreaded = {**results, 'machine': {**results['machine'], 'threads': 2,
                                         'vtseg_kernels_threaded': False}}
    assert (f'vtseg kernels {kernels_isa()} built without OpenMP: PyTorch\'s products ran '
            'instead)') in format_table(unthreaded)
    fractions = floor_fractions(results)
    for b in (1, 2):  # the floor row: the fastest lateral form against VT-FPN's best
        floor = min((m for m in floor_rows if m['batch'] == b),
                    key=lambda m: m['stats']['median'])
        vt_best = best[('inference', 'neck', (64, 64), b)]['vt']
        fraction = fractions[('inference', 'neck', (64, 64), b)]
        assert fraction['floor'] is floor and fraction['vt'] is vt_best
        assert fraction['fraction'] == pytest.approx(floor['times_s'][0] / vt_best['times_s'][0])
        assert (f'| 64x64 | {b} | {floor["macs"] / 1e9:.2f} | '
                f'{floor["stats"]["median"] * 1e3:.1f} ({floor["form"]}) |') in table
        assert f'| {100 * fraction["fraction"]:.0f}%' in table
    assert "Where VT-FPN's time goes" in table
    for b in (1, 2):  # the stages row: median ms, and GMAC/s where a stage has MACs
        by_stage = {m['stage']: m for m in stage_rows if m['batch'] == b}
        lateral = by_stage['lateral convs']
        rate = lateral['macs'] * b / lateral['stats']['median'] / 1e9
        assert (f'| 64x64 | {b} | {lateral["stats"]["median"] * 1e3:.1f} ({rate:.0f}) | '
                in table)
        assert f' | {by_stage["other"]["stats"]["median"] * 1e3:.1f} | ' in table
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
        return dict(mode='neck', neck=neck, size=[px, 1], batch=1, stats=dict(median=t),
                    times_s=[t], macs=None)
    results = dict(measurements=[row('FPN', 100, 1.0), row('FPN', 400, 4.0),
                                 row('VT-FPN', 100, 1.0), row('VT-FPN', 400, 2.0)])
    slopes = scaling_exponents(results)
    assert slopes[('neck', 'FPN')] == pytest.approx(1.0)
    assert slopes[('neck', 'VT-FPN')] == pytest.approx(0.5)


@pytest.mark.slow  # builds and runs two whole R-50 segmentors (at 64x64)
def test_cli_writes_table_json_and_plot(tmp_path):
    out = tmp_path / 'bench'
    proc = run_command(
        [sys.executable, ROOT / 'tools/benchmark.py', '--models', 'neck,r50',
         '--sizes', '64x64', '--repeats', '1', '--warmup', '0',
         '--forms', 'eager,channels_last', '--train-sizes', '64x64',
         '--matmul-size', '64', '--threads', '1', '--clock', 'cpu', '--out-dir', out],
        cwd=ROOT, env=dict(os.environ), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '| R-50 | 64x64 | 1 | eager |' in proc.stdout
    assert '| neck | 64x64 | 1 | channels_last |' in proc.stdout
    assert '| R-50 train step | 64x64 | 2 | channels_last |' in proc.stdout
    assert 'FPN CPU ms' in proc.stdout and 'process CPU time' in proc.stdout
    data = json.loads((out / 'benchmark.json').read_text())
    assert {m['mode'] for m in data['measurements']} == {'neck', 'r50'}
    r50 = {(m['neck'], m['kind']): m for m in data['measurements']
           if m['mode'] == 'r50' and m['form'] == 'eager'}
    # Whole model: backbone + neck + head, VT-FPN cheaper by the neck difference only.
    assert r50['FPN', 'inference']['macs'] > r50['VT-FPN', 'inference']['macs'] > 0
    assert {k for k in r50} == {(n, k) for n in ('FPN', 'VT-FPN')
                                for k in ('inference', 'train')}
    assert (out / 'benchmark_latency.png').stat().st_size > 0


def _cli():
    spec = importlib.util.spec_from_file_location('benchmark_cli', ROOT / 'tools/benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_capped_instruction_set_needs_its_environment(monkeypatch):
    for name in CPU_ISA_ENV['avx2']:
        monkeypatch.delenv(name, raising=False)
    settings = BenchmarkSettings(**{**TINY, 'forms': ['eager'], 'cpu_isa': 'avx2'})
    settings.check(environment=False)  # the CLI checks the rest, then starts anew with it
    with pytest.raises(ValueError, match='needs ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA'
                                         '=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 set before'):
        settings.check()


@pytest.mark.skipif(platform.machine() not in ('x86_64', 'AMD64')
                    or 'avx2' not in Path('/proc/cpuinfo').read_text(),
                    reason='needs an x86-64 CPU with AVX2')
def test_cli_runs_both_models_as_on_a_cpu_without_avx512(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in CPU_ISA_ENV['avx2']}
    out = tmp_path / 'bench'
    proc = run_command(
        [sys.executable, ROOT / 'tools/benchmark.py', '--cpu-isa', 'avx2', '--models', 'neck',
         '--sizes', '64x64', '--repeats', '1', '--warmup', '0', '--forms', 'eager',
         '--train-sizes', '', '--matmul-size', '64', '--no-memory', '--out-dir', out],
        cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((out / 'benchmark.json').read_text())
    assert data['settings']['cpu_isa'] == 'avx2'
    # PyTorch and vtseg's kernels ran capped (oneDNN and MKL read the same environment)
    assert data['machine']['torch_cpu_capability'] == 'AVX2'
    assert data['machine']['vtseg_kernels'] == 'avx2'
    assert 'Instruction set: capped at AVX2, as on a CPU without AVX-512' in proc.stdout
    assert '| neck | 64x64 | 1 | eager |' in proc.stdout


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
    # Refused before anything is measured, one error: line each, as every vtseg tool.
    assert cli.main(['--out-dir', str(bad)]) == 2  # a file, where results would go
    assert 'is a file, not a folder' in capsys.readouterr().err
    assert cli.main(['--repeats', '0']) == 2
    assert '--repeats: must be a positive integer' in capsys.readouterr().err
    assert cli.main(['--models', 'r18']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and "choose among ['neck', 'r50', 'r101']" in err
    assert cli.main(['--cpu-isa', 'avx2', '--forms', 'eager,onnxruntime']) == 2
    assert 'cannot be capped at avx2' in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(['--device', 'cuda']) == 2
        assert 'no CUDA device' in capsys.readouterr().err


def test_floor_fraction_is_paired_and_flags_a_disturbed_floor():
    """The fraction of the floor's speed is the median over rounds of floor / VT-FPN, each
    pair timed in one round; a floor slower than the neck that contains it is a disturbed
    run, and the table says so instead of printing a fraction above 100% silently."""
    results = run_benchmark(BenchmarkSettings(**{**TINY, 'forms': ['eager'], 'repeats': 3,
                                                 'throughput_sizes': [], 'memory': False}),
                            log=lambda _: None)
    key = ('inference', 'neck', (64, 64), 1)
    vt = best_forms(results)[key]['vt']
    floor = next(m for m in results['measurements'] if m['kind'] == 'floor')
    floor['times_s'] = [t * f for t, f in zip(vt['times_s'], (0.5, 0.7, 0.6))]
    floor['stats']['median'] = sorted(floor['times_s'])[1]
    assert floor_fractions(results)[key]['fraction'] == pytest.approx(0.6)
    assert '| 60% |' in format_table(results)
    floor['times_s'] = [t * 1.9 for t in vt['times_s']]  # e.g. a thread descheduled
    floor['stats']['median'] = sorted(floor['times_s'])[1]
    table = format_table(results)
    assert "| 190% (above 100%: the floor's times were disturbed; run again) |" in table


def test_cli_redraws_from_json(tmp_path, capsys):
    results = run_benchmark(BenchmarkSettings(**{**TINY, 'memory': False}), log=lambda _: None)
    saved = tmp_path / 'saved.json'
    saved.write_text(json.dumps(results))
    assert _cli().main(['--from-json', str(saved), '--out-dir', str(tmp_path / 'redraw')]) == 0
    out = capsys.readouterr().out
    assert '| neck | 64x64 | 1 | eager |' in out and 'n/a / n/a' in out  # no memory measured
    assert (tmp_path / 'redraw' / 'benchmark_latency.png').stat().st_size > 0




@pytest.mark.slow  # compiles two necks and a few convs (about a minute on 2 cores)
def test_compiled_forms_are_timed_after_compiling():
    logs = []
    results = run_benchmark(BenchmarkSettings(**{**TINY, 'forms': ['eager', 'optimized+compile'],
                                                 'throughput_sizes': [], 'memory': False}),
                            log=logs.append)
    assert [(m['kind'], m['neck'], m['form']) for m in results['measurements']] == [
        ('inference', 'FPN', 'eager'), ('inference', 'FPN', 'optimized+compile'),
        ('inference', 'VT-FPN', 'eager'), ('inference', 'VT-FPN', 'optimized+compile'),
        ('floor', 'VT-FPN', 'eager'), ('floor', 'VT-FPN', 'optimized+compile')] \
        + [('stage', 'VT-FPN', 'eager')] * (len(STAGES) + 1)  # compiled: no stages to hook
    # FPN, VT-FPN and VT-FPN's lateral convs (its floor), each compiled before timing
    assert sum('compiled in' in line for line in logs) == 3


def test_rounds_run_the_two_necks_next_to_each_other(monkeypatch):
    """Each round times the forms one by one with FPN and VT-FPN back to back, so the two
    times of a ratio are taken seconds apart."""
    from vtseg.analysis.benchmark import runner

    orders = []

    def recording(fns, **kwargs):
        orders.append(list(fns))
        return interleaved_times(fns, **kwargs)

    monkeypatch.setattr(runner, 'interleaved_times', recording)
    run_benchmark(BenchmarkSettings(**{**TINY, 'forms': ['eager', 'channels_last'],
                                       'throughput_sizes': [], 'memory': False}),
                  log=lambda _: None)
    # VT-FPN's lateral convs alone (its floor) run in the same rounds, after the necks
    assert orders == [[('FPN', 'eager'), ('VT-FPN', 'eager'), ('VT-FPN laterals', 'eager'),
                       ('FPN', 'channels_last'), ('VT-FPN', 'channels_last'),
                       ('VT-FPN laterals', 'channels_last')]]


def test_laterals_are_the_necks_lateral_convs_alone():
    """The floor module runs exactly VT-FPN's lateral convs: their outputs and their MACs,
    nothing of the VT blocks."""
    from vtseg.analysis.benchmark.models import Laterals, backbone_shapes
    from vtseg.analysis.config_model import build_model_from_config
    from vtseg.analysis.flops import flop_analyzer

    path = ROOT / 'configs' / 'vtfpn_r50_coco-stuff164k.py'
    neck = build_model_from_config(path, part='neck')[0].eval()
    inputs = [torch.randn(1, *s) for s in backbone_shapes(path, (64, 96))]
    laterals = Laterals(neck)
    with torch.no_grad():
        outs = laterals(inputs)
        expected = [conv(x) for conv, x in zip(neck.lateral_convs, inputs)]
    assert len(outs) == len(neck.lateral_convs) == 4
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert all(p is q for p, q in zip(laterals.parameters(), neck.lateral_convs.parameters()))
    # Per module (conv, norm, activation) the same MACs as inside the neck, which does more.
    neck_macs = flop_analyzer(neck, (inputs,)).by_module()
    lateral_macs = flop_analyzer(laterals, (inputs,)).by_module()
    convs = [f'lateral_convs.{i}.conv' for i in range(4)]
    assert all(lateral_macs[k] == neck_macs[k] > 0 for k in convs)
    assert lateral_macs['lateral_convs'] == neck_macs['lateral_convs']
    assert lateral_macs[''] == neck_macs['lateral_convs'] < neck_macs['']


def test_stages_are_timed_in_place_without_changing_the_neck():
    """The stage hooks find VT-FPN's laterals, tokenizers, transformer and projectors from
    the model, only read the clock (same outputs, no hook left behind) and refuse FPN."""
    from vtseg.analysis.benchmark.models import backbone_shapes
    from vtseg.analysis.benchmark.stages import stage_modules
    from vtseg.analysis.config_model import build_model_from_config

    path = ROOT / 'configs' / 'vtfpn_r50_coco-stuff164k.py'
    neck = build_model_from_config(path, part='neck')[0].eval()
    inputs = [torch.randn(1, *s) for s in backbone_shapes(path, (64, 96))]
    modules = stage_modules(neck)
    assert list(modules) == list(STAGES[:-1])
    assert modules['lateral convs'] == list(neck.lateral_convs)
    assert modules['tokenizers'] == list(neck.tokenizers)
    assert modules['transformer'] == [neck.transformer]
    assert modules['projectors'] == list(neck.projectors)
    with torch.no_grad():
        before = neck(inputs)
    times = stage_times(neck, inputs, warmup=1, repeats=3)
    with torch.no_grad():
        after = neck(inputs)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in neck.modules())
    assert set(times) == {*STAGES, 'total'} and all(len(t) == 3 for t in times.values())
    assert all(t > 0 for s in STAGES[:-1] for t in times[s])
    for r in range(3):
        assert sum(times[s][r] for s in STAGES) == pytest.approx(times['total'][r])
    fpn = build_model_from_config(ROOT / 'configs' / 'fpn_r50_coco-stuff164k.py',
                                  part='neck')[0]
    with pytest.raises(TypeError, match='VT-FPN necks only'):
        stage_modules(fpn)
