# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the collection's maintenance engines (gc, purge, backup) on an MLflow host, without Ansible.

The systemd timers of the mlflow_server role run, as the service user and with the server's
EnvironmentFiles::

    <venv>/bin/python -m ansible_collections.mlops.mlflow.plugins.module_utils.maintenance_cli \\
        purge --older-than 30d --tracking-uri http://127.0.0.1:5000

The database URL comes from MLFLOW_BACKEND_STORE_URI in the environment (the server's secrets
file), never from the command line; the object-store keys reach the engines the same way. For a
manual run, --env-file reads such files itself (repeatable, later files win).

Every progress line goes to stdout as it happens (the journal, under systemd) and the last line is
one summary, ``summary: <command> ...`` with the counts per table and the duration. Every line, and
every error message, has the database password, the store URIs and the values of other secret-looking
variables masked. Exit status: 0 done (also when there was nothing to do), 1 failed (the reason on
stderr), 2 bad command line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from ansible_collections.mlops.mlflow.plugins.module_utils.envfile import (
    EnvFileError, apply_env, load_env_files, secret_values)
from ansible_collections.mlops.mlflow.plugins.module_utils.schema import SchemaError, sanitize, url_secrets

DB_URL_VARIABLE = 'MLFLOW_BACKEND_STORE_URI'
PROG = 'mlflow-maintenance'
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_ENGINES = {
    'gc': ('gc', 'run_gc'),
    'purge': ('purge', 'run_purge'),
    'backup': ('backup', 'run_backup'),
}


def _engine(command):
    """The engine function of a subcommand, imported only when it runs."""
    module_name, func = _ENGINES[command]
    module = __import__('ansible_collections.mlops.mlflow.plugins.module_utils.' + module_name, fromlist=[func])
    return getattr(module, func)


def _id_list(text):
    """argparse type: comma-separated ids (blanks dropped)."""
    return [item.strip() for item in text.split(',') if item.strip()]


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not a whole number' % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError('%r must be 1 or more' % text)
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Maintenance of an MLflow tracking database (the mlops.mlflow engines, without Ansible). '
                    'The database URL is read from %s in the environment.' % DB_URL_VARIABLE)
    parser.add_argument('--env-file', action='append', default=[], metavar='PATH',
                        help='read variables from this systemd EnvironmentFile first (repeatable, later files win)')
    parser.add_argument('--connect-timeout', type=_positive_int, default=10, metavar='SECONDS',
                        help='database connection timeout (default 10)')
    parser.add_argument('--check', action='store_true', help='only report what would be done; change nothing')
    sub = parser.add_subparsers(dest='command', metavar='{gc,purge,backup}')
    sub.required = True

    gc = sub.add_parser('gc', help="MLflow's own gc: permanently delete deleted runs, experiments, logged models")
    gc.add_argument('--older-than', default=None, metavar='AGE',
                    help="only what was deleted longer ago than AGE (MLflow's #d#h#m#s, e.g. 30d); default everything")
    gc.add_argument('--run-ids', type=_id_list, default=None, metavar='ID,...')
    gc.add_argument('--experiment-ids', type=_id_list, default=None, metavar='ID,...')
    gc.add_argument('--logged-model-ids', type=_id_list, default=None, metavar='ID,...')
    gc.add_argument('--tracking-uri', default=None, metavar='URL',
                    help='the running server (http://127.0.0.1:5000), needed for proxied mlflow-artifacts:/ artifacts')
    gc.add_argument('--artifacts-destination', default=None, metavar='URI')

    purge = sub.add_parser('purge', help='set-based permanent delete of deleted runs/experiments with all dependents')
    purge.add_argument('--scope', choices=('all', 'runs', 'experiments'), default='all')
    purge.add_argument('--older-than', default=None, metavar='AGE',
                       help="only what was deleted longer ago than AGE (MLflow's #d#h#m#s, e.g. 30d); default everything")
    purge.add_argument('--experiment-ids', type=_id_list, default=None, metavar='ID,...')
    purge.add_argument('--experiment-names', action='append', default=None, metavar='NAME',
                       help='an experiment name (repeatable: names may hold commas)')
    purge.add_argument('--run-ids', type=_id_list, default=None, metavar='ID,...')
    purge.add_argument('--batch-size', type=_positive_int, default=500)
    purge.add_argument('--keep-artifacts', action='store_true', help='delete the rows only, leave the artifacts')
    purge.add_argument('--include-registered-runs', action='store_true',
                       help='also purge runs that registered model versions still point to')
    purge.add_argument('--tracking-uri', default=None, metavar='URL',
                       help='the running server (http://127.0.0.1:5000), needed for proxied mlflow-artifacts:/ artifacts')

    backup = sub.add_parser('backup', help='pg_dump / mariadb-dump / sqlite online backup with retention')
    backup.add_argument('--dest-dir', required=True, metavar='DIR')
    backup.add_argument('--keep', type=_positive_int, default=7, help='backups to keep (default 7)')
    backup.add_argument('--prefix', default='mlflow')
    backup.add_argument('--dump-command', default=None, metavar='PATH',
                        help='pg_dump / mariadb-dump to use instead of the one on PATH')
    return parser


def engine_kwargs(args, db_url):
    """The keyword arguments of the engine function for the parsed command line."""
    common = {'check_mode': args.check, 'connect_timeout': args.connect_timeout}
    if args.command == 'gc':
        return dict(common, db_url=db_url, older_than=args.older_than or None, run_ids=args.run_ids or None,
                    experiment_ids=args.experiment_ids or None, logged_model_ids=args.logged_model_ids or None,
                    tracking_uri=args.tracking_uri or None, artifacts_destination=args.artifacts_destination or None)
    if args.command == 'purge':
        return dict(common, db_url=db_url, scope=args.scope, older_than=args.older_than or None,
                    experiment_ids=args.experiment_ids or None, experiment_names=args.experiment_names or None,
                    run_ids=args.run_ids or None, batch_size=args.batch_size,
                    delete_artifacts=not args.keep_artifacts, keep_registered_runs=not args.include_registered_runs,
                    tracking_uri=args.tracking_uri or None)
    return dict(common, db_url=db_url, dest_dir=args.dest_dir, keep=args.keep, prefix=args.prefix,
                dump_command=args.dump_command or None)


def _pairs(mapping):
    return ' '.join('%s=%s' % (key, value) for key, value in mapping.items())


def summary_line(command, result, check_mode, duration):
    """One line with what the engine did (or would do): counts per table and the duration."""
    result = result or {}
    words = ['summary:', command, 'changed=%s' % str(bool(result.get('changed'))).lower()]
    if check_mode:
        words.append('check_mode=true')
    if command == 'gc':
        words.append(_pairs(result.get('counts') or {}))
        if result.get('artifact_warnings'):
            words.append('artifact_warnings=%d' % len(result['artifact_warnings']))
    elif command == 'purge':
        words.append('runs=%s experiments=%s' % (result.get('runs', 0), result.get('experiments', 0)))
        rows = {table: n for table, n in (result.get('counts') or {}).items() if n}
        words.append('rows[%s]' % _pairs(rows))
        artifacts = result.get('artifacts') or {}
        if artifacts:
            words.append('artifacts[deleted=%s failed=%d]' % (artifacts.get('deleted', 0), len(artifacts.get('failed') or ())))
    else:
        words.append('path=%s size=%s removed=%d kept=%d' % (
            result.get('path'), result.get('size'), len(result.get('removed') or ()), len(result.get('kept') or ())))
        if result.get('warnings'):
            words.append('warnings=%d' % len(result['warnings']))
    words.append('duration=%.2fs' % duration)
    return ' '.join(word for word in words if word)


def main(argv=None, stdout=None, stderr=None):
    """Run one subcommand; returns the exit status."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    secrets = set()

    def say(text, stream=stdout):
        stream.write(sanitize(text, secrets) + '\n')
        stream.flush()

    def fail(text):
        say('%s %s: error: %s' % (PROG, args.command, text), stderr)
        return EXIT_FAILED

    try:
        if args.env_file:
            env = load_env_files(args.env_file)
            secrets.update(secret_values(env))
            apply_env(env)
    except EnvFileError as exc:
        return fail(str(exc))
    secrets.update(secret_values(os.environ))
    db_url = os.environ.get(DB_URL_VARIABLE, '').strip()
    if not db_url:
        return fail('%s is not set: run with the server\'s EnvironmentFiles (systemd EnvironmentFile=, or --env-file '
                    '/etc/mlflow/server.env --env-file /etc/mlflow/server-secrets.env)' % DB_URL_VARIABLE)
    secrets.update(url_secrets(db_url))
    for name in ('tracking_uri', 'artifacts_destination'):
        if getattr(args, name, None):
            secrets.update(url_secrets(getattr(args, name)))

    started = time.monotonic()
    say('%s %s: started%s' % (PROG, args.command, ' (check mode: nothing is changed)' if args.check else ''))
    try:
        run = _engine(args.command)
        result = run(log=say, **engine_kwargs(args, db_url))
    except SchemaError as exc:
        partial = getattr(exc, 'result', None)
        if partial:
            say(summary_line(args.command, partial, args.check, time.monotonic() - started))
        return fail(str(exc))
    except ImportError as exc:
        return fail('the %s engine cannot be imported with %s: %s' % (args.command, sys.executable, exc))
    except KeyboardInterrupt:
        fail('interrupted')
        return 130
    except Exception as exc:  # pylint: disable=broad-exception-caught
        # Unexpected: keep the traceback for the journal, with every secret masked.
        say(traceback.format_exc().rstrip(), stderr)
        return fail('unexpected %s: %s' % (type(exc).__name__, exc))
    say(summary_line(args.command, result, args.check, time.monotonic() - started))
    return EXIT_OK


if __name__ == '__main__':
    raise SystemExit(main())
