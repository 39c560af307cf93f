# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fetch one object from an S3 API endpoint with boto3 and describe it.

Reads a JSON object from stdin (so credentials stay out of argv):
{"endpoint_url", "region", "access_key_id", "secret_access_key", "bucket", "key"}.
Prints one JSON line: {"found", "key", "size", "body", "keys"} where keys lists
the bucket's keys (at most 1000) for diagnosis. Exits 0 even when not found.
"""

from __future__ import annotations

import json
import sys


def main():
    import boto3  # pylint: disable=import-outside-toplevel
    from botocore.config import Config  # pylint: disable=import-outside-toplevel
    from botocore.exceptions import ClientError  # pylint: disable=import-outside-toplevel

    spec = json.load(sys.stdin)
    client = boto3.client(
        's3', endpoint_url=spec['endpoint_url'], region_name=spec.get('region') or 'us-east-1',
        aws_access_key_id=spec['access_key_id'], aws_secret_access_key=spec['secret_access_key'],
        config=Config(s3={'addressing_style': 'path'}))
    listing = client.list_objects_v2(Bucket=spec['bucket'])
    result = {'key': spec['key'], 'keys': [o['Key'] for o in listing.get('Contents', [])],
              'found': False, 'size': None, 'body': None}
    try:
        obj = client.get_object(Bucket=spec['bucket'], Key=spec['key'])
    except ClientError as exc:
        result['error'] = str(exc)
    else:
        body = obj['Body'].read()
        result.update(found=True, size=len(body), body=body.decode('utf-8', 'replace'))
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == '__main__':
    sys.exit(main())
