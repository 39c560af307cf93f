# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One HTTP probe of an MLflow server's /health endpoint.

Used by the gc engine (which must know the server answers before MLflow deletes proxied
artifacts through it) and by server_info. Plain http.client: no redirects are followed, and it
works without Ansible (the maintenance timers import the gc engine directly).
"""

from __future__ import annotations

import os
import ssl
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from urllib.parse import urlparse


def _tls_context(cafile, insecure):
    context = ssl.create_default_context(cafile=cafile or None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def mlflow_client_tls():
    """The TLS settings MLflow's own HTTP client takes from the environment: (cafile, insecure)."""
    insecure = os.environ.get('MLFLOW_TRACKING_INSECURE_TLS', '').strip().lower() in ('1', 'true')
    return os.environ.get('MLFLOW_TRACKING_SERVER_CERT_PATH') or None, insecure


def probe_health(base_url, timeout, cafile=None, insecure=False):
    """GET BASE_URL/health once.

    Returns a dict: url (the probe, without user info), ok (status 200), status (None when no
    HTTP answer came), body (first 200 characters), error (why there was no answer, else None).
    """
    parsed = urlparse(base_url)
    netloc = parsed.netloc.rpartition('@')[2]
    probe = parsed._replace(netloc=netloc, path=parsed.path.rstrip('/') + '/health').geturl()
    result = {'url': probe, 'ok': False, 'status': None, 'body': None, 'error': None}
    try:
        if parsed.scheme == 'https':
            connection = HTTPSConnection(parsed.hostname, parsed.port, timeout=timeout,
                                         context=_tls_context(cafile, insecure))
        elif parsed.scheme == 'http':
            connection = HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
        else:
            raise ValueError('not an http(s) URL: %s' % probe)
        try:
            connection.request('GET', parsed.path.rstrip('/') + '/health')
            response = connection.getresponse()
            body = response.read(200).decode('utf-8', 'replace')
        finally:
            connection.close()
    except (HTTPException, OSError, ValueError) as exc:
        # Connection refused or reset, timeouts, TLS failures, bad URLs: all mean "not healthy".
        result['error'] = '%s: %s' % (type(exc).__name__, exc)
        return result
    result.update(status=response.status, body=body, ok=response.status == 200)
    return result
