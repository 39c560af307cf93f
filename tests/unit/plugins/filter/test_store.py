# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""db_uri builds URIs that SQLAlchemy parses back to exactly the parts given."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from ansible.errors import AnsibleFilterError
from ansible_collections.mlops.mlflow.plugins.filter.store import db_uri

NASTY = 'Canary:p@ss/w%rd#1?&= "\'$`\\ ü'


@pytest.mark.parametrize('db_type, drivername, port', [('postgresql', 'postgresql+psycopg2', 5432), ('mysql', 'mysql+pymysql', 3306)])
def test_password_with_every_special_character_roundtrips(db_type, drivername, port):
    uri = db_uri({'type': db_type, 'host': 'db.example.com', 'name': 'ml flow/x', 'user': 'ml@user', 'password': NASTY})
    url = make_url(uri)
    assert url.drivername == drivername
    assert url.password == NASTY
    assert url.username == 'ml@user'
    assert url.database == 'ml flow/x'
    assert url.host == 'db.example.com'
    assert url.port == port
    assert NASTY not in uri


def test_tls_and_options_for_postgresql():
    uri = db_uri({'type': 'postgresql', 'host': 'db', 'port': 6432, 'name': 'mlflow', 'user': 'u', 'password': 'p',
                  'sslmode': 'verify-full', 'sslrootcert': '/etc/ssl/certs/db ca.pem', 'options': {'connect_timeout': 10}})
    url = make_url(uri)
    assert url.port == 6432
    assert dict(url.query) == {'sslmode': 'verify-full', 'sslrootcert': '/etc/ssl/certs/db ca.pem', 'connect_timeout': '10'}


def test_tls_for_mysql_is_ssl_ca():
    url = make_url(db_uri({'type': 'mysql', 'host': 'db', 'name': 'mlflow', 'user': 'u', 'sslrootcert': '/etc/ca.pem'}))
    assert dict(url.query) == {'ssl_ca': '/etc/ca.pem'}
    assert url.password is None


def test_ipv6_host_gets_brackets():
    assert make_url(db_uri({'type': 'postgresql', 'host': 'fd00::5', 'name': 'm'})).host == 'fd00::5'


@pytest.mark.parametrize('parts, message', [
    ({'type': 'oracle', 'host': 'h', 'name': 'n'}, 'type must be one of'),
    ({'type': 'postgresql', 'host': '', 'name': 'n'}, 'host and name are required'),
    ({'type': 'postgresql', 'host': 'h', 'name': 'n', 'sslmode': 'sometimes'}, 'sslmode must be one of'),
    ({'type': 'mysql', 'host': 'h', 'name': 'n', 'sslmode': 'require'}, 'postgresql only'),
    ('postgresql://x', 'expects a dict'),
])
def test_bad_parts_are_refused(parts, message):
    with pytest.raises(AnsibleFilterError, match=message):
        db_uri(parts)
