"""What vtseg's command lines share: argument types, ``--cfg-options`` and error reporting.

Every tool in ``tools/`` is a thin wrapper: it builds an :class:`ArgumentParser`, and
``parser.run(body)`` turns any failure into one ``error:`` line and exit status 2
(``--debug`` or ``VTSEG_DEBUG=1`` shows the traceback).
"""
from .arguments import (
    ArgumentParser,
    check_work_dir,
    checkpoint_file,
    config_file,
    device,
    existing_path,
    looks_like_checkpoint,
    positive_int,
    sniff_file,
    work_dir,
)
from .cfg_options import (
    CfgOptionError,
    CfgOptionsAction,
    ConfigFileError,
    merge_cfg_options,
    read_config,
)
from .errors import (
    DEBUG_ENV,
    EXIT_ERROR,
    EXIT_PARTIAL,
    CLIError,
    debug_enabled,
    format_error,
    report_error,
    run_main,
)

__all__ = ['ArgumentParser', 'CLIError', 'CfgOptionError', 'CfgOptionsAction',
           'ConfigFileError', 'DEBUG_ENV', 'read_config',
           'EXIT_ERROR', 'EXIT_PARTIAL', 'check_work_dir', 'checkpoint_file', 'config_file',
           'debug_enabled', 'device', 'existing_path', 'format_error', 'looks_like_checkpoint',
           'merge_cfg_options', 'positive_int', 'report_error', 'run_main', 'sniff_file',
           'work_dir']
