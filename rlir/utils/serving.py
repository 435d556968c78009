"""The two local web servers' shared plumbing (`rlir play`, `rlir human-eval serve`): bind the port before
anything slow, with a one-line error, then serve a Flask app threaded until Ctrl-C."""
from __future__ import annotations

import logging
import socket

from rlir.errors import ConfigError

log = logging.getLogger("rlir.serving")


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound first so a taken or bad port is told at once (werkzeug's own bind
    prints two lines and exits)."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        why = str(e.strerror or e).split(" (while attempting")[0]    # create_server appends the address again
        raise ConfigError(f"cannot listen on {host}:{port}: {why}; give another --port (0 picks a free one)") \
            from None


def serve(app, sock: socket.socket, host: str, name: str, banner: str, who: str, verbose: bool = False) -> int:
    """Serve `app` on the bound `sock` until Ctrl-C. banner: what is served, printed with the address;
    who: what a visitor can do, for the warning when listening beyond this machine."""
    from werkzeug.serving import make_server
    try:
        if not verbose:                 # one log line per request is noise; -v shows them
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = make_server(host, sock.getsockname()[1], app, threaded=True, fd=sock.fileno())
    except BaseException:
        sock.close()
        raise
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach this machine can %s", host, who)
    print(f"{name}: {banner} on http://{shown}:{server.port}/  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()           # werkzeug's returns on Ctrl-C
    finally:
        server.server_close()
        sock.close()
    print(f"{name}: stopped")
    return 0
