# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Back up an MLflow tracking database into a directory, with retention.

PostgreSQL is dumped with ``pg_dump --format=custom``, MySQL/MariaDB with ``mariadb-dump``
(or ``mysqldump``) ``--single-transaction --routines --triggers`` into a gzip file, SQLite with
sqlite3's online backup API. Every method gives a consistent snapshot while the server runs.

The password never appears in a command line or in a message: pg_dump gets it (and the
other connection parameters of the URL) through its PG* environment variables, mariadb-dump
through a temporary 0600 option file (``--defaults-extra-file``) removed afterwards, and
every message is sanitised.

Only the standard library and module_utils.schema are used (no Ansible), so the same code
runs from the db_backup module and, on the hosts, from a systemd timer.
"""

from __future__ import annotations

import datetime
import errno
import gzip
import hashlib
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import tempfile
import time
from urllib.parse import quote

from ansible_collections.mlops.mlflow.plugins.module_utils.schema import (
    SchemaError, mask_url, parse_db_url, sanitize, sqlite_path, url_secrets)

# backend -> file name extension of its backups
EXTENSIONS = {'postgresql': 'pgdump', 'mysql': 'sql.gz', 'sqlite': 'sqlite3'}
BACKENDS = tuple(EXTENSIONS)
# Default dump tools, tried in order.
DEFAULT_DUMP_COMMANDS = {'postgresql': ('pg_dump',), 'mysql': ('mariadb-dump', 'mysqldump')}
TIMESTAMP_FORMAT = '%Y%m%dT%H%M%SZ'
PREFIX_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*$')
# How much of a failed tool's stderr is shown.
STDERR_LIMIT = 4000
CHUNK = 1024 * 1024

# URL query parameters (libpq keywords, as psycopg2/psycopg accept them) -> libpq environment variables.
PG_QUERY_ENV = {
    'host': 'PGHOST',
    'hostaddr': 'PGHOSTADDR',
    'port': 'PGPORT',
    'sslmode': 'PGSSLMODE',
    'sslrootcert': 'PGSSLROOTCERT',
    'sslcert': 'PGSSLCERT',
    'sslkey': 'PGSSLKEY',
    'sslcrl': 'PGSSLCRL',
    'sslcompression': 'PGSSLCOMPRESSION',
    'sslsni': 'PGSSLSNI',
    'gssencmode': 'PGGSSENCMODE',
    'channel_binding': 'PGCHANNELBINDING',
    'passfile': 'PGPASSFILE',
    'service': 'PGSERVICE',
    'options': 'PGOPTIONS',
    'application_name': 'PGAPPNAME',
    'target_session_attrs': 'PGTARGETSESSIONATTRS',
    'connect_timeout': 'PGCONNECT_TIMEOUT',
    'krbsrvname': 'PGKRBSRVNAME',
}

# URL query parameters (PyMySQL / SQLAlchemy's pymysql dialect) -> MariaDB client option names.
MYSQL_QUERY_OPTIONS = {
    'unix_socket': 'socket',
    'ssl_ca': 'ssl-ca',
    'ssl_capath': 'ssl-capath',
    'ssl_cert': 'ssl-cert',
    'ssl_key': 'ssl-key',
    'ssl_cipher': 'ssl-cipher',
    'charset': 'default-character-set',
}
TRUE_WORDS = ('1', 'true', 'yes', 'on')


# --------------------------------------------------------------------------- names and retention

def backup_pattern(prefix):
    """Regular expression of the file names this module gives backups with prefix."""
    return re.compile(r'^%s-(?P<backend>%s)-(?P<ts>\d{8}T\d{6}Z)\.(?P<ext>%s)$'
                      % (re.escape(prefix), '|'.join(BACKENDS),
                         '|'.join(re.escape(ext) for ext in EXTENSIONS.values())))


def backup_name(prefix, backend, when):
    return '%s-%s-%s.%s' % (prefix, backend, when.strftime(TIMESTAMP_FORMAT), EXTENSIONS[backend])


def list_backups(dest_dir, prefix):
    """Backups made with prefix in dest_dir (regular files only), oldest first, as absolute paths."""
    pattern = backup_pattern(prefix)
    found = []
    try:
        names = os.listdir(dest_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SchemaError('dest_dir %s cannot be read: %s' % (dest_dir, exc.strerror or exc)) from exc
    for name in names:
        match = pattern.match(name)
        if not match:
            continue
        path = os.path.join(dest_dir, name)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        found.append((match.group('ts'), name, path))
    return [path for dummy_ts, dummy_name, path in sorted(found)]


def plan_retention(existing, new_path, keep):
    """(kept, removed): the new backup plus the keep-1 newest others are kept, the rest removed.

    The new backup is always kept, even if a clock set back makes an older file look newer.
    """
    others = [p for p in existing if p != new_path]
    kept_others = others[len(others) - (keep - 1):] if keep > 1 else []
    removed = others[:len(others) - len(kept_others)]
    return kept_others + [new_path], removed


# --------------------------------------------------------------------------- validation

def _validate(db_url, dest_dir, keep, prefix, dump_command):
    """Check every argument before anything is written; returns (url, backend, tool path or None)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise SchemaError('keep must be an integer of at least 1 (the number of backups to keep), got %r' % (keep,))
    if not isinstance(prefix, str) or not PREFIX_PATTERN.match(prefix):
        raise SchemaError('prefix must start with a letter or digit and hold only letters, digits, ".", "_" and "-", '
                          'got %r' % (prefix,))
    if not isinstance(dest_dir, str) or not dest_dir or not os.path.isabs(dest_dir):
        raise SchemaError('dest_dir must be an absolute path, got %r' % (dest_dir,))
    if os.path.exists(dest_dir) and not os.path.isdir(dest_dir):
        raise SchemaError('dest_dir %s exists and is not a directory' % dest_dir)
    if not db_url:
        raise SchemaError('db_url is required')
    url = parse_db_url(db_url)
    backend = url.get_backend_name()
    if backend not in BACKENDS:
        raise SchemaError('db_url uses the backend %r, which db_backup does not support (supported: %s)'
                          % (backend, ', '.join(BACKENDS)))
    if backend == 'sqlite':
        if dump_command:
            raise SchemaError('dump_command does not apply to sqlite db_url (sqlite is backed up with '
                              "Python's sqlite3 backup API)")
        path = sqlite_path(url)
        if not os.path.isfile(path):
            raise SchemaError('The sqlite database %s of db_url does not exist' % path)
        return url, backend, None
    if not url.database:
        raise SchemaError('db_url names no database (expected %s://user@host/database)' % url.drivername)
    return url, backend, _find_tool(backend, dump_command)


def _find_tool(backend, dump_command):
    if dump_command:
        found = shutil.which(dump_command)
        if not found:
            raise SchemaError('dump_command %r was not found or is not executable' % dump_command)
        return os.path.abspath(found)
    for name in DEFAULT_DUMP_COMMANDS[backend]:
        found = shutil.which(name)
        if found:
            return found
    package = {'postgresql': 'the PostgreSQL client (Debian/Ubuntu: postgresql-client)',
               'mysql': 'the MariaDB or MySQL client (Debian/Ubuntu: mariadb-client)'}[backend]
    raise SchemaError('No dump tool for %s found in PATH (%s): install %s or set dump_command'
                      % (backend, ' or '.join(DEFAULT_DUMP_COMMANDS[backend]), package))


# --------------------------------------------------------------------------- commands

def _query_value(value):
    if isinstance(value, (tuple, list)):
        return ','.join(str(v) for v in value)
    return str(value)


def pg_dump_command(tool, url, out_path, connect_timeout=10, base_env=None):
    """(argv, env, ignored query parameters) of pg_dump; the password is only in env (PGPASSWORD)."""
    env = dict(os.environ if base_env is None else base_env)
    if connect_timeout:
        env['PGCONNECT_TIMEOUT'] = str(int(connect_timeout))
    if url.host:
        env['PGHOST'] = url.host
    if url.port:
        env['PGPORT'] = str(url.port)
    if url.username:
        env['PGUSER'] = url.username
    if url.password is not None:
        env['PGPASSWORD'] = str(url.password)
    # Through the environment, never the dbname argument (which libpq would expand as a conninfo string).
    env['PGDATABASE'] = url.database
    ignored = []
    for key, value in url.query.items():
        if key in PG_QUERY_ENV:
            env[PG_QUERY_ENV[key]] = _query_value(value)
        else:
            ignored.append(key)
    argv = [tool, '--format=custom', '--no-password', '--file=%s' % out_path]
    return argv, env, ignored


def _option_value(value):
    """A value for a MariaDB/MySQL option file: double-quoted, with the parser's escapes."""
    value = str(value)
    for char, escaped in (('\\', '\\\\'), ('"', '\\"'), ('\n', '\\n'), ('\r', '\\r'), ('\t', '\\t')):
        value = value.replace(char, escaped)
    return '"%s"' % value


def mysql_option_file_text(url):
    """(text of the [client] option file, ignored query parameters) for mariadb-dump/mysqldump."""
    lines = ['[client]']
    if url.username:
        lines.append('user=%s' % _option_value(url.username))
    if url.password is not None:
        lines.append('password=%s' % _option_value(url.password))
    ignored = []
    query = {k: _query_value(v) for k, v in url.query.items()}
    if 'unix_socket' not in query:
        # Like PyMySQL: TCP to host (default localhost) and port, where the client tools would use
        # the unix socket for "localhost".
        lines.append('host=%s' % _option_value(url.host or 'localhost'))
        lines.append('port=%d' % (url.port or 3306))
        lines.append('protocol=tcp')
    for key, value in sorted(query.items()):
        if key in MYSQL_QUERY_OPTIONS:
            lines.append('%s=%s' % (MYSQL_QUERY_OPTIONS[key], _option_value(value)))
        elif key in ('ssl_check_hostname', 'ssl_verify_cert'):
            if value.lower() in TRUE_WORDS:
                lines.append('ssl-verify-server-cert')
        else:
            ignored.append(key)
    return '\n'.join(lines) + '\n', ignored


def mysql_dump_command(tool, url, option_file):
    """argv of mariadb-dump/mysqldump; connection settings and password are in option_file."""
    charset = _query_value(url.query.get('charset', 'utf8mb4'))
    return [tool, '--defaults-extra-file=%s' % option_file,
            '--single-transaction', '--routines', '--triggers', '--hex-blob', '--no-tablespaces',
            '--default-character-set=%s' % charset, '--', url.database]


# --------------------------------------------------------------------------- dumps

def _tail(handle, secrets):
    handle.seek(0)
    text = handle.read().decode('utf-8', 'replace').strip()
    if len(text) > STDERR_LIMIT:
        text = '...' + text[-STDERR_LIMIT:]
    return sanitize(text, secrets)


def _run_tool(argv, env, stdout, what, db_url):
    secrets = url_secrets(db_url)
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=errors, check=False)
        except OSError as exc:
            raise SchemaError('%s could not be started (%s): %s' % (what, argv[0], exc.strerror or exc)) from exc
        if proc.returncode != 0:
            raise SchemaError('%s failed (exit %d) on %s: %s'
                              % (what, proc.returncode, mask_url(db_url), _tail(errors, secrets) or 'no error output'))


def _dump_postgresql(tool, url, db_url, tmp_path, connect_timeout, log):
    argv, env, ignored = pg_dump_command(tool, url, tmp_path, connect_timeout)
    if ignored:
        log('db_backup: URL query parameters without a libpq environment variable are ignored: %s' % ', '.join(ignored))
    _run_tool(argv, env, subprocess.DEVNULL, os.path.basename(tool), db_url)


def _probe_tcp(url, db_url, connect_timeout):
    """mariadb-dump has no connect timeout: fail fast with a clear message when the server does not answer."""
    host, port = url.host or 'localhost', url.port or 3306
    try:
        socket.create_connection((host, port), timeout=connect_timeout or None).close()
    except OSError as exc:
        raise SchemaError('Cannot connect to the MySQL/MariaDB server %s:%d of %s (connect_timeout %ss): %s'
                          % (host, port, mask_url(db_url), connect_timeout, exc.strerror or exc)) from exc


def _dump_mysql(tool, url, db_url, tmp_path, connect_timeout, log):
    text, ignored = mysql_option_file_text(url)
    if ignored:
        log('db_backup: URL query parameters without a client option are ignored: %s' % ', '.join(ignored))
    if 'unix_socket' not in url.query:
        _probe_tcp(url, db_url, connect_timeout)
    fd, option_file = tempfile.mkstemp(prefix='mlflow-backup-', suffix='.cnf')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
        argv = mysql_dump_command(tool, url, option_file)
        # Compress in this process: the tool writes plain SQL to a pipe.
        with open(tmp_path, 'wb') as raw, gzip.GzipFile(fileobj=raw, mode='wb', filename='', mtime=0) as gz:
            with tempfile.TemporaryFile() as errors:
                try:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
                except OSError as exc:
                    raise SchemaError('%s could not be started: %s' % (tool, exc.strerror or exc)) from exc
                try:
                    with proc.stdout:
                        for chunk in iter(lambda: proc.stdout.read(CHUNK), b''):
                            gz.write(chunk)
                except BaseException:
                    proc.kill()
                    proc.wait()
                    raise
                returncode = proc.wait()
                if returncode != 0:
                    raise SchemaError('%s failed (exit %d) on %s: %s'
                                      % (os.path.basename(tool), returncode, mask_url(db_url),
                                         _tail(errors, url_secrets(db_url)) or 'no error output'))
    finally:
        os.unlink(option_file)


def _dump_sqlite(url, db_url, tmp_path, connect_timeout):
    path = sqlite_path(url)
    try:
        source = sqlite3.connect('file:%s?mode=ro' % quote(path), uri=True, timeout=connect_timeout or 5)
    except sqlite3.Error as exc:
        raise SchemaError('Cannot open the sqlite database %s: %s' % (path, exc)) from exc
    try:
        target = sqlite3.connect(tmp_path)
        try:
            # One step (pages=-1): sqlite holds a read lock for the whole copy, so the copy is
            # a consistent snapshot even while the server writes.
            source.backup(target)
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise SchemaError('Backing up the sqlite database %s failed: %s' % (path, sanitize(exc, url_secrets(db_url)))) \
            from exc
    finally:
        source.close()


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path, directory=False):
    flags = os.O_RDONLY | (getattr(os, 'O_DIRECTORY', 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp_path, final_path):
    """Give the finished temp file its final name without overwriting an existing file."""
    try:
        os.link(tmp_path, final_path)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise SchemaError('%s appeared while the backup ran (another backup with the same prefix?); '
                              'the new backup was discarded' % final_path) from exc
        # File systems without hard links: check, then rename (atomic, may overwrite a racing file).
        if os.path.exists(final_path):
            raise SchemaError('%s appeared while the backup ran; the new backup was discarded' % final_path) from exc
        os.rename(tmp_path, final_path)
    else:
        os.unlink(tmp_path)


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _free_name(dest_dir, prefix, backend, wait):
    """The file name of a new backup; a name already taken (two runs in one second) moves to the next second."""
    when = _utcnow()
    for dummy in range(5):
        name = backup_name(prefix, backend, when)
        if not os.path.lexists(os.path.join(dest_dir, name)):
            return name
        when = when + datetime.timedelta(seconds=1)
        if wait:
            delay = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
            if delay > 0:
                time.sleep(delay)
    raise SchemaError('Cannot find a free backup file name in %s (%s exists)' % (dest_dir, name))


# --------------------------------------------------------------------------- entry point

def run_backup(db_url, dest_dir, keep=7, prefix='mlflow', dump_command=None, check_mode=False, connect_timeout=10,
               log=print):
    """Back up the MLflow tracking database db_url into dest_dir and apply retention.

    Returns a dict: changed (always True: every run makes a backup), path (the new file, predicted
    in check mode), size and sha256 (None in check mode), backend (sqlite, postgresql, mysql),
    duration_s, removed (backups deleted by retention, or that would be), kept (the backups left,
    the new one included), before (the backups found before the run), warnings (list of texts),
    dump_command (the tool used, None for sqlite). Paths are absolute and sorted oldest first.

    Raises SchemaError, with a password-free message, for bad arguments (before anything is
    written) and failed dumps (no partial file is left behind and retention is not applied).

    log receives one line of text per step; the messages never hold the password.
    """
    return _backup(db_url, dest_dir, keep, prefix, dump_command, check_mode, connect_timeout, log)


def _backup(db_url, dest_dir, keep, prefix, dump_command, check_mode, connect_timeout, log):
    started = time.monotonic()
    url, backend, tool = _validate(db_url, dest_dir, keep, prefix, dump_command)
    dest_dir = os.path.normpath(dest_dir)
    existing = list_backups(dest_dir, prefix)
    name = _free_name(dest_dir, prefix, backend, wait=not check_mode)
    final_path = os.path.join(dest_dir, name)
    kept, removed = plan_retention(existing, final_path, keep)
    result = {
        'changed': True,
        'path': final_path,
        'size': None,
        'sha256': None,
        'backend': backend,
        'duration_s': 0.0,
        'removed': removed,
        'kept': kept,
        'before': existing,
        'warnings': [],
        'dump_command': tool,
    }
    if not check_mode:
        _ensure_dir(dest_dir, log)
        log('db_backup: backing up %s to %s' % (mask_url(db_url), final_path))
        size, digest = _write_backup(backend, tool, url, db_url, final_path, connect_timeout, log)
        result.update(size=size, sha256=digest)
        log('db_backup: wrote %s (%d bytes, sha256 %s)' % (final_path, size, digest))
        kept, removed, warnings = _apply_retention(dest_dir, prefix, final_path, keep, log)
        result.update(kept=kept, removed=removed, warnings=warnings)
    result['duration_s'] = round(time.monotonic() - started, 3)
    return result


def _ensure_dir(dest_dir, log):
    if os.path.isdir(dest_dir):
        return
    try:
        os.makedirs(dest_dir, mode=0o700)
        os.chmod(dest_dir, 0o700)
    except OSError as exc:
        raise SchemaError('dest_dir %s cannot be created: %s' % (dest_dir, exc.strerror or exc)) from exc
    log('db_backup: created %s (mode 0700)' % dest_dir)


def _write_backup(backend, tool, url, db_url, final_path, connect_timeout, log):
    """Dump into a hidden temp file beside final_path, then publish it; returns (size, sha256).

    On any failure the temp file (and sqlite's side files) are removed and the error is raised.
    """
    dest_dir, name = os.path.split(final_path)
    try:
        fd, tmp_path = tempfile.mkstemp(prefix='.%s.' % name, suffix='.partial', dir=dest_dir)
    except OSError as exc:
        raise SchemaError('Cannot write in dest_dir %s: %s' % (dest_dir, exc.strerror or exc)) from exc
    os.close(fd)
    try:
        if backend == 'postgresql':
            _dump_postgresql(tool, url, db_url, tmp_path, connect_timeout, log)
        elif backend == 'mysql':
            _dump_mysql(tool, url, db_url, tmp_path, connect_timeout, log)
        else:
            _dump_sqlite(url, db_url, tmp_path, connect_timeout)
        os.chmod(tmp_path, 0o600)
        size = os.path.getsize(tmp_path)
        if size == 0:
            raise SchemaError('The dump of %s is empty; the backup was discarded' % mask_url(db_url))
        digest = _sha256(tmp_path)
        _fsync_path(tmp_path)
        _publish(tmp_path, final_path)
    except BaseException:
        for leftover in (tmp_path, tmp_path + '-journal', tmp_path + '-wal', tmp_path + '-shm'):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        raise
    _fsync_path(dest_dir, directory=True)
    return size, digest


def _apply_retention(dest_dir, prefix, final_path, keep, log):
    """Remove the old backups beyond keep; returns (kept, removed, warnings).

    Works on what is in dest_dir now (another run may have added or removed files meanwhile).
    A file that cannot be removed is a warning (and stays in kept), not a failure: the backup exists.
    """
    kept, planned = plan_retention(list_backups(dest_dir, prefix), final_path, keep)
    removed, warnings = [], []
    for path in planned:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            kept.insert(0, path)
            warnings.append('Retention could not remove %s: %s' % (path, exc.strerror or exc))
            continue
        removed.append(path)
        log('db_backup: removed %s (keep=%d)' % (path, keep))
    return kept, removed, warnings
