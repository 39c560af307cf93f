# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that build MLflow store URIs from their parts."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from ansible.errors import AnsibleFilterError

# SQLAlchemy dialect+driver per database type, and the driver's default port.
_DIALECTS = {
    'postgresql': ('postgresql+psycopg2', 5432),
    'mysql': ('mysql+pymysql', 3306),
}
_PG_SSLMODES = ('disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full')


def _quote(value):
    """Percent-encode everything that is not unreserved, '/' and ':' and '@' included."""
    return quote(str(value), safe='')


def db_uri(parts):
    """Build a SQLAlchemy URL for MLflow's backend store from a dict of parts.

    Keys: type (postgresql | mysql), host, port (0 = default), name, user, password,
    sslmode (postgresql only), sslrootcert (CA file on the target), options (extra query
    parameters). User, password and database name are percent-encoded, so passwords with
    any character work.
    """
    if not isinstance(parts, dict):
        raise AnsibleFilterError('db_uri expects a dict of parts, got %s' % type(parts).__name__)
    db_type = parts.get('type')
    if db_type not in _DIALECTS:
        raise AnsibleFilterError('db_uri: type must be one of %s, got %r' % (', '.join(sorted(_DIALECTS)), db_type))
    dialect, default_port = _DIALECTS[db_type]
    host = str(parts.get('host') or '')
    name = str(parts.get('name') or '')
    if not host or not name:
        raise AnsibleFilterError('db_uri: host and name are required')
    if ':' in host and not host.startswith('['):
        host = '[%s]' % host
    port = int(parts.get('port') or 0) or default_port
    user = str(parts.get('user') or '')
    password = parts.get('password')
    userinfo = ''
    if user:
        userinfo = _quote(user)
        if password not in (None, ''):
            userinfo += ':' + _quote(password)
        userinfo += '@'

    query = []
    sslmode = parts.get('sslmode') or ''
    sslrootcert = parts.get('sslrootcert') or ''
    if db_type == 'postgresql':
        if sslmode:
            if sslmode not in _PG_SSLMODES:
                raise AnsibleFilterError('db_uri: sslmode must be one of %s' % ', '.join(_PG_SSLMODES))
            query.append(('sslmode', sslmode))
        if sslrootcert:
            query.append(('sslrootcert', sslrootcert))
    else:
        if sslmode:
            raise AnsibleFilterError('db_uri: sslmode applies to postgresql only; for mysql give sslrootcert (ssl_ca)')
        if sslrootcert:
            query.append(('ssl_ca', sslrootcert))
    for key, value in sorted((parts.get('options') or {}).items()):
        query.append((str(key), str(value)))

    uri = '%s://%s%s:%d/%s' % (dialect, userinfo, host, port, _quote(name))
    if query:
        uri += '?' + urlencode(query, quote_via=quote)
    return uri


class FilterModule:
    """Store URI filters."""

    def filters(self):
        return {'db_uri': db_uri}
