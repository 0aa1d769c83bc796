#!/usr/bin/env python3
"""Abusive HTTP/2 clients, on raw frames, against a real authgate.

Usage: h2_abuse.py MODE HOST:PORT [--key KEY] [--calls N] [--connections C]
                   [--kept M] [--reckless]

Modes (each prints one JSON object on its last line of output):

  settings     the server's SETTINGS; with --reckless, also opens --calls
               bodiless streams ignoring the advertised stream limit and
               counts those the server refused (RST_STREAM REFUSED_STREAM).
  bodiless     --connections connections (1) each open --calls CheckAccess
               calls that send headers and never a body, as many at once as
               the server allows, a refused or answered one replaced at
               once. Prints "ready" when every call has been answered, or
               when for a second none could be opened nor was answered,
               then holds what is open until standard input closes.
  stalled      like bodiless, but each call is a complete request, and the
               client's flow-control window is 0 and never grows: no answer
               can be sent, every stream stays open. "ready" and holding
               as in bodiless.
  reset        --calls RecordFailure calls for users reset-0.., each sent
               whole and reset (RST_STREAM CANCEL) in the same write, five
               at a time; then --kept calls for users kept-0.., not reset,
               answered.
  goaway       --connections connections, each sending 150 requests that it
               resets before the server accepts them: past the server's
               limit of such streams (its max_concurrent_streams, 100 by
               default) it answers GOAWAY ENHANCE_YOUR_CALM.

Exit status: 0 when the mode ran, 2 on bad usage, 3 when the h2 package is
missing.
"""

import argparse
import json
import selectors
import socket
import sys
import threading
import time

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    import h2.settings
    from h2.errors import ErrorCodes
    from h2.settings import SettingCodes
except ImportError:
    print("python h2 is missing: pip install -r tests/python/requirements.txt", file=sys.stderr)
    sys.exit(3)

CHECK = "/authgate.v1.AccessService/CheckAccess"
RECORD = "/authgate.v1.AccessService/RecordFailure"
HEALTH = "/grpc.health.v1.Health/Check"
# How long a mode waits for the server before it gives up.
PATIENCE = 30.0


def field(number, payload):
    """A length-delimited protobuf field."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def grpc_frame(message):
    """A gRPC message: uncompressed, its length, itself."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def access_request(user, ip="192.0.2.50"):
    """CheckAccessRequest / RecordFailureRequest: context, subject."""
    subject = field(1, user.encode()) + field(2, ip.encode())
    return grpc_frame(field(1, b"login") + field(2, subject))


class Reckless(h2.connection.H2Connection):
    """Opens streams whatever the server's SETTINGS_MAX_CONCURRENT_STREAMS."""

    @property
    def open_outbound_streams(self):
        return 0


class Client:
    """One HTTP/2 connection, driven by hand."""

    def __init__(self, addr, key=None, window=None, reckless=False):
        host, port = addr.rsplit(":", 1)
        self.authority = addr
        self.key = key
        self.sock = socket.create_connection((host, int(port)), timeout=PATIENCE)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = (Reckless if reckless else h2.connection.H2Connection)(config=config)
        if window is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=True,
                initial_values={
                    SettingCodes.INITIAL_WINDOW_SIZE: window,
                    SettingCodes.ENABLE_PUSH: 0,
                },
            )
        self.conn.initiate_connection()
        self.flush()
        self.settings = None
        self.closed = False
        self.goaway = None
        # stream id -> what happened to it
        self.opened_at = {}
        self.status = {}
        self.ended = {}
        self.refused = 0

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(self, path):
        h = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", self.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if self.key:
            h.append(("authorization", f"Bearer {self.key}"))
        return h

    def open(self, path, body=None, reset=False, end_stream=None):
        """Opens a stream and returns its id; None if the server's stream
        limit, or its flow-control window for the body, does not allow it
        now."""
        if body is not None and self.conn.outbound_flow_control_window < len(body):
            return None
        sid = self.conn.get_next_available_stream_id()
        try:
            self.conn.send_headers(
                sid, self.headers(path), end_stream=bool(end_stream and body is None)
            )
        except h2.exceptions.TooManyStreamsError:
            return None
        if body is not None:
            self.conn.send_data(sid, body, end_stream=True)
        if reset:
            self.conn.reset_stream(sid, ErrorCodes.CANCEL)
        self.opened_at[sid] = time.monotonic()
        return sid

    def can_open(self):
        if self.settings is None:
            return False
        return self.conn.open_outbound_streams < self.conn.remote_settings.max_concurrent_streams

    def pump(self, timeout):
        """Reads what the server sent within `timeout`; returns the events."""
        if self.closed:
            return []
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return []
        except OSError:
            self.closed = True
            return []
        if not data:
            self.closed = True
            return []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return []
        for e in events:
            self.note(e)
        try:
            self.flush()
        except OSError:
            self.closed = True
        return events

    def note(self, e):
        if isinstance(e, h2.events.RemoteSettingsChanged):
            self.settings = {
                SettingCodes(code).name if code in SettingCodes._value2member_map_ else code:
                changed.new_value
                for code, changed in e.changed_settings.items()
            }
            if self.settings_seen is None:
                self.settings_seen = dict(self.settings)
        elif isinstance(e, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            for k, v in e.headers:
                if k == "grpc-status":
                    self.status[e.stream_id] = int(v)
        elif isinstance(e, h2.events.StreamEnded):
            self.ended[e.stream_id] = time.monotonic()
        elif isinstance(e, h2.events.StreamReset):
            self.ended.setdefault(e.stream_id, time.monotonic())
            if e.error_code == ErrorCodes.REFUSED_STREAM:
                self.refused += 1
        elif isinstance(e, h2.events.ConnectionTerminated):
            self.goaway = ErrorCodes(e.error_code).name if e.error_code in ErrorCodes._value2member_map_ else e.error_code
            self.closed = True

    settings_seen = None

    def await_settings(self):
        deadline = time.monotonic() + PATIENCE
        while self.settings is None and not self.closed and time.monotonic() < deadline:
            self.pump(0.2)
        if self.settings is None:
            raise SystemExit("the server sent no SETTINGS")

    def ping(self):
        """Sends a PING and reads until its ACK: the server has read all
        sent before it."""
        payload = time.monotonic_ns().to_bytes(8, "big")
        self.conn.ping(payload)
        self.flush()
        deadline = time.monotonic() + PATIENCE
        while not self.closed and time.monotonic() < deadline:
            for e in self.pump(0.2):
                if isinstance(e, h2.events.PingAckReceived) and e.ping_data == payload:
                    return
        raise SystemExit(f"no PING ACK (connection closed: {self.closed}, GOAWAY: {self.goaway})")


def stdin_closed():
    """An event set once standard input reaches its end."""
    done = threading.Event()

    def wait():
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    return done


def codes(clients):
    seen = {}
    for c in clients:
        for s in c.status.values():
            seen[str(s)] = seen.get(str(s), 0) + 1
    return seen


def answer_ms(clients):
    """Milliseconds from opening each answered stream to its end."""
    return sorted(
        (c.ended[sid] - c.opened_at[sid]) * 1000
        for c in clients
        for sid in c.status
        if sid in c.ended and sid in c.opened_at
    )


def hold(args, complete):
    """bodiless and stalled: open --calls per connection, then hold."""
    done = stdin_closed()
    window = 0 if complete else None
    clients = [Client(args.addr, args.key, window=window) for _ in range(args.connections)]
    for c in clients:
        c.await_settings()
    body = access_request("stalled") if complete else None
    opened = [0] * len(clients)
    most_open = [0] * len(clients)
    ready = False
    last_progress = time.monotonic()
    while not done.is_set():
        progressed = False
        for i, c in enumerate(clients):
            while opened[i] < args.calls and not c.closed and c.can_open():
                if c.open(CHECK, body=body) is None:
                    break
                opened[i] += 1
                progressed = True
            most_open[i] = max(most_open[i], c.conn.open_outbound_streams)
            try:
                c.flush()
            except OSError:
                c.closed = True
        for c in clients:
            if c.pump(0.0 if progressed else 0.05):
                progressed = True
        if progressed:
            last_progress = time.monotonic()
        # Every call opened and answered, or none opened nor answered for a
        # second: the server's stream limit keeps more from opening.
        all_answered = all(
            (n >= args.calls and c.conn.open_outbound_streams == 0) or c.closed
            for n, c in zip(opened, clients)
        )
        stuck = time.monotonic() - last_progress > 1.0
        if not ready and (all_answered or stuck):
            print("ready", flush=True)
            ready = True
    report = {
        "opened": sum(opened),
        "most_open": max(most_open),
        "open_now": sum(c.conn.open_outbound_streams for c in clients),
        "codes": codes(clients),
        "answer_ms": answer_ms(clients),
        "refused": sum(c.refused for c in clients),
        "closed": sum(1 for c in clients if c.closed),
        "max_concurrent_streams": clients[0].settings_seen.get("MAX_CONCURRENT_STREAMS"),
    }
    print(json.dumps(report), flush=True)


def settings(args):
    c = Client(args.addr, args.key, reckless=args.reckless)
    c.await_settings()
    report = {"settings": c.settings_seen}
    if args.reckless:
        for _ in range(args.calls):
            c.open(CHECK)
        c.flush()
        c.ping()
        deadline = time.monotonic() + 5
        while c.refused < args.calls - 100 and not c.closed and time.monotonic() < deadline:
            c.pump(0.1)
        report["opened"] = args.calls
        report["refused"] = c.refused
    print(json.dumps(report), flush=True)


def reset(args):
    c = Client(args.addr, args.key)
    c.await_settings()
    flood_goaway = None
    for start in range(0, args.calls, 5):
        for i in range(start, min(start + 5, args.calls)):
            c.open(RECORD, body=access_request(f"reset-{i}"), reset=True)
        c.flush()
        try:
            c.ping()
        except SystemExit:
            if not c.closed:
                raise
            # On a starved host the stack may count the resets as a rapid
            # reset and close the connection (its own defence): the rest go
            # on a new one, and the flood's GOAWAY is reported apart.
            flood_goaway = c.goaway
            c = Client(args.addr, args.key)
            c.await_settings()
    kept = [c.open(RECORD, body=access_request(f"kept-{i}")) for i in range(args.kept)]
    c.flush()
    deadline = time.monotonic() + PATIENCE
    while not all(sid in c.ended for sid in kept) and not c.closed and time.monotonic() < deadline:
        c.pump(0.2)
    report = {
        "reset": args.calls,
        "kept_codes": codes([c]),
        "goaway": c.goaway,
        "flood_goaway": flood_goaway,
    }
    print(json.dumps(report), flush=True)


def goaway(args):
    answers = {}
    for _ in range(args.connections):
        c = Client(args.addr)
        c.await_settings()
        for _ in range(150):
            c.open(HEALTH, body=None, reset=True, end_stream=True)
        c.flush()
        deadline = time.monotonic() + PATIENCE
        while not c.closed and time.monotonic() < deadline:
            c.pump(0.2)
        answers[str(c.goaway)] = answers.get(str(c.goaway), 0) + 1
        c.sock.close()
    print(json.dumps({"goaway": answers}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["settings", "bodiless", "stalled", "reset", "goaway"])
    p.add_argument("addr")
    p.add_argument("--key")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--kept", type=int, default=50)
    p.add_argument("--reckless", action="store_true")
    args = p.parse_args()
    if args.mode == "settings":
        settings(args)
    elif args.mode in ("bodiless", "stalled"):
        hold(args, complete=args.mode == "stalled")
    elif args.mode == "reset":
        reset(args)
    else:
        goaway(args)


if __name__ == "__main__":
    main()
