"""export.py --serve: the web page on the local network, over HTTPS, for a phone.

Browsers run a page's service worker (offline use), its camera and "Add to Home Screen" only in
a secure context: https, or localhost. A phone on the Wi-Fi reaches the computer by its
address, so plain ``python -m http.server`` gives it none of them. This server:

* makes a self-signed certificate once (the ``cryptography`` library; EC P-256, valid for
  localhost, 127.0.0.1 and this computer's addresses) and keeps it in
  ``~/.pokedex_ultra/serve/`` (``POKEDEX_SERVE_DIR``), made again when the address changes or
  it nears its end; the phone's browser asks once to accept it;
* serves only the page's folder, with the headers the page needs: cross-origin isolation
  (COOP/COEP, so ONNX Runtime Web may use threads) and the right types for ``.mjs`` and
  ``.wasm``;
* prints the address and a QR code of it (``segno``) for the phone's camera.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import logging
import os
import socket
import ssl
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pokedex_trainer.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8443
CERT_DAYS = 825
RENEW_DAYS = 30


def serve_dir() -> Path:
    given = os.environ.get("POKEDEX_SERVE_DIR")
    return Path(given) if given else Path.home() / ".pokedex_ultra" / "serve"


def page_folder(given: str) -> Path:
    """The web page's folder from a run directory or the folder itself; one line otherwise."""
    path = Path(given)
    for folder in (path, path / "export" / "web", path / "web"):
        if (folder / "index.html").is_file() and (folder / "model.json").is_file():
            return folder
    raise UserError(f"--serve: '{given}' holds no exported web page (index.html and model.json):"
                    " export one first with python export.py --run_dir RUN --formats web")


def lan_address() -> str:
    """This computer's address on the local network (the one its default route uses), or
    127.0.0.1 without one. Nothing is sent: a UDP socket is only pointed somewhere."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def _names(address: str) -> list[str]:
    return sorted({"localhost", "127.0.0.1", address})


def certificate(folder: Path, address: str) -> tuple[Path, Path]:
    """(cert.pem, key.pem) in ``folder``, valid for localhost, 127.0.0.1 and ``address``:
    the kept pair, or a new one when it lacks the address or nears its end."""
    from cryptography import x509

    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    if cert_path.is_file() and key_path.is_file():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            covered = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} | \
                set(names.get_values_for_type(x509.DNSName))
            left = cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)
            if set(_names(address)) <= covered and left.days > RENEW_DAYS:
                return cert_path, key_path
        except (ValueError, x509.ExtensionNotFound):
            pass  # not one of ours or damaged: a new pair replaces it
    _write_certificate(folder, address)
    return cert_path, key_path


def _write_certificate(folder: Path, address: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pokedex Ultra (this computer)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    alternatives = []
    for entry in _names(address):
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alternatives.append(x509.DNSName(entry))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    partial = folder / ".key.pem.partial"
    partial.write_bytes(key_bytes)
    os.chmod(partial, 0o600)
    os.replace(partial, folder / "key.pem")
    (folder / ".cert.pem.partial").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(folder / ".cert.pem.partial", folder / "cert.pem")


class PageHandler(SimpleHTTPRequestHandler):
    """The page's files with the headers it needs; quiet (one line per error only)."""

    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm",
                      ".onnx": "application/octet-stream", ".json": "application/json",
                      ".webmanifest": "application/manifest+json"}

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.path.startswith("/sw.js"):
            self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    timeout = 60  # a connection that says nothing for a minute is closed

    def setup(self):
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, in this connection's thread

    def list_directory(self, path):  # only the page's own files, no folder listings
        self.send_error(404)
        return None

    def log_message(self, format, *args):
        if args and str(args[1] if len(args) > 1 else "").startswith(("4", "5")):
            logger.info("%s %s", self.address_string(), format % args)


class PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a phone that refused the certificate, a dropped connection: not the user's problem
        logger.debug("connection from %s ended early", client_address[0])


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def make_server(folder: Path, host: str, port: int, cert_folder: Path | None = None
                ) -> tuple[ThreadingHTTPServer, str]:
    """The HTTPS server of ``folder`` (not started) and the address a phone opens. The port is
    taken first: a --bind or --port that fails leaves the kept certificate as it was."""
    import errno

    address = lan_address() if host in ("0.0.0.0", "") else host
    try:
        server = PageServer((host, port), functools.partial(PageHandler, directory=str(folder)))
    except OSError as exc:
        advice = "choose another --port" if exc.errno == errno.EADDRINUSE else \
            "is --bind an address of this computer? (0.0.0.0: all of them)"
        raise UserError(f"--serve: cannot listen on {host}:{port} "
                        f"({exc.strerror or exc}); {advice}") from None
    kept = cert_folder or serve_dir()
    try:
        cert, key = certificate(kept, address)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    except OSError as exc:
        server.server_close()
        raise UserError(f"--serve: cannot keep the page's certificate in '{kept}' "
                        f"({exc.strerror or exc}); POKEDEX_SERVE_DIR sets another folder") \
            from None
    # the handshake in the request's own thread, not in accept(): a browser's preconnect that
    # never speaks would otherwise hold the whole server
    server.socket = context.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    return server, f"https://{address}:{server.server_address[1]}/"


def serve_command(given: str, host: str = "0.0.0.0", port: int = DEFAULT_PORT,
                  ready: threading.Event | None = None) -> None:
    """export.py --serve: serve until Ctrl-C."""
    folder = page_folder(given)
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: a port is a number from 1 to 65535")
    server, url = make_server(folder, host, port)
    print(f"Serving {folder} at {url}")
    if _is_loopback(url.split("/")[2].rsplit(":", 1)[0]):
        print("Open it in a browser on this computer (this address keeps it off the network; "
              "--bind 0.0.0.0 serves the phones on the Wi-Fi). Ctrl-C stops.")
    else:
        print("Open it on a phone on the same Wi-Fi (scan the code). The certificate is this "
              "computer's own: the browser asks once to go on (Advanced, then proceed). "
              "Ctrl-C stops.")
        try:
            import segno

            segno.make(url, error="m").terminal(compact=True)
        except ImportError:
            logger.warning("no QR code: install segno (pip install -r requirements.txt)")
    if ready is not None:
        ready.server, ready.url = server, url
        ready.set()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
