# Copyright: mlops.mlflow contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fake OpenAI-compatible API for molecule scenarios (stdlib only).

POST /v1/chat/completions, /v1/completions and /v1/embeddings answer with
OpenAI-shaped JSON; the chat answer is "fake answer to: <last user message>".
The Authorization header and body of the last calls are recorded (newest last)
in RECORD_FILE (mode 0600; nothing of them goes to the log), so tests can
check which key a gateway sent without the key ever being printed.

    fake_openai.py --host 0.0.0.0 --port 8000 --record /var/lib/fake-openai/calls.json
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
KEEP = 50


def record(path, entry):
    with LOCK:
        try:
            with open(path, encoding='utf-8') as handle:
                calls = json.load(handle)
        except (OSError, ValueError):
            calls = []
        calls = (calls + [entry])[-KEEP:]
        tmp = path + '.tmp'
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            json.dump(calls, handle)
        os.replace(tmp, path)


def usage(n=3):
    return {'prompt_tokens': n, 'completion_tokens': n, 'total_tokens': 2 * n}


def chat(body):
    messages = body.get('messages') or [{}]
    last = next((m.get('content') for m in reversed(messages) if m.get('role') == 'user'), '')
    return {'id': 'chatcmpl-fake', 'object': 'chat.completion', 'created': int(time.time()),
            'model': body.get('model', 'fake'),
            'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': 'fake answer to: %s' % last},
                         'finish_reason': 'stop'}],
            'usage': usage()}


def completions(body):
    prompt = body.get('prompt', '')
    return {'id': 'cmpl-fake', 'object': 'text_completion', 'created': int(time.time()),
            'model': body.get('model', 'fake'),
            'choices': [{'index': 0, 'text': 'fake completion of: %s' % prompt, 'logprobs': None,
                         'finish_reason': 'stop'}],
            'usage': usage()}


def embeddings(body):
    inputs = body.get('input', '')
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return {'object': 'list', 'model': body.get('model', 'fake'),
            'data': [{'object': 'embedding', 'index': i, 'embedding': [0.1, 0.2, 0.3]} for i in range(len(inputs))],
            'usage': {'prompt_tokens': len(inputs), 'total_tokens': len(inputs)}}


ROUTES = {'/v1/chat/completions': chat, '/v1/completions': completions, '/v1/embeddings': embeddings}


class Handler(BaseHTTPRequestHandler):
    server_version = 'fake-openai/1'
    record_path = ''

    def reply(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path in ('/', '/health'):
            self.reply(200, {'status': 'ok'})
        else:
            self.reply(404, {'error': {'message': 'not found'}})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(length) if length else b''
        try:
            body = json.loads(raw or b'{}')
        except ValueError:
            self.reply(400, {'error': {'message': 'body is not JSON'}})
            return
        path = self.path.split('?', 1)[0]
        record(self.record_path, {'path': path, 'authorization': self.headers.get('Authorization'),
                                  'body': body, 'time': time.time()})
        handler = ROUTES.get(path)
        if handler is None:
            self.reply(404, {'error': {'message': 'unknown path %s' % path}})
        else:
            self.reply(200, handler(body))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=8000)
    parser.add_argument('--record', required=True)
    args = parser.parse_args()
    Handler.record_path = args.record
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == '__main__':
    main()
