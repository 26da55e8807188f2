"""Speed and memory of FPN vs VT-FPN, measured side by side, best against best.

Each model (the neck alone, or a whole segmentor) is timed in every form a user can get
(:mod:`.forms`: eager, channels_last, the optimisation step, ``torch.compile``), all in
the same interleaved rounds (:mod:`.runner`), and the best form of each is compared
(:mod:`.report`). Peak memory (:mod:`.memory`), MACs, VT-FPN's floor (its lateral
convs timed alone in the same rounds, :class:`.models.Laterals`), where VT-FPN's time
goes (its stages timed in place, :mod:`.stages`) and the training step
(:mod:`.train_step`) come with it.
"""
from .forms import FORMS, TRAIN_FORMS
from .memory import peak_memory
from .report import (
    best_forms,
    floor_fractions,
    format_table,
    machine_info,
    paired_speedup,
    plot_latency,
    save_results,
    scaling_exponents,
)
from .runner import Measurement, run_benchmark
from .settings import (
    CPU_ISA_ENV,
    HOST_MEMORY,
    MODES,
    NECKS,
    PAPER_SIZES,
    BenchmarkSettings,
    cpu_isa_applied,
    default_dataset,
    parse_size,
)
from .stages import STAGES, stage_times
from .timing import interleaved_times, matmul_rate

__all__ = [
    'NECKS', 'MODES', 'HOST_MEMORY', 'CPU_ISA_ENV', 'FORMS', 'TRAIN_FORMS', 'PAPER_SIZES',
    'BenchmarkSettings', 'cpu_isa_applied', 'STAGES', 'stage_times',
    'Measurement', 'parse_size', 'default_dataset', 'matmul_rate', 'peak_memory',
    'interleaved_times', 'run_benchmark', 'format_table', 'best_forms', 'floor_fractions',
    'paired_speedup', 'scaling_exponents', 'plot_latency', 'save_results', 'machine_info',
]
