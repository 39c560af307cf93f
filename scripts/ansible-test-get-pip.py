# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for the get-pip.py bootstrap script that ansible-test downloads.

ansible-test bootstraps pip into each sanity-test virtualenv with a get-pip.py
fetched from ci-files.testing.ansible.com, which the project's machines cannot
reach. scripts/test copies this file to ~/.ansible/test/cache/get_pip_<ver>.py,
where ansible-test looks first. It does what get-pip.py does: install the
requested pip (and packages) into the running interpreter, but it starts from
the pip wheel bundled with CPython (ensurepip) and then fetches the exact
versions ansible-test asked for from the package index.
"""

from __future__ import annotations

import subprocess
import sys

# get-pip.py options that `pip install` does not know.
GET_PIP_ONLY = {'--no-setuptools', '--no-wheel'}


def main():
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
    subprocess.run([sys.executable, '-m', 'ensurepip', '--default-pip'], check=True, stdout=subprocess.DEVNULL)
    return subprocess.run([sys.executable, '-m', 'pip', 'install'] + args, check=False).returncode


if __name__ == '__main__':
    sys.exit(main())
