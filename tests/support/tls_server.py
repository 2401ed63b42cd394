"""A server on 127.0.0.1 that takes PostgreSQL's SSL request and presents a certificate libpq
must refuse: what a connection meets when `sslmode=verify-full` names the wrong host or
`sslrootcert` the wrong authority (the embedded PostgreSQL is built without SSL).

It answers the 8-byte SSLRequest with `S`, as PostgreSQL does, and completes the TLS handshake
from its side with a self-signed certificate for `hostname`; libpq then checks the certificate
and gives up, so nothing past TLS is ever spoken.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SSL_REQUEST = 8  # bytes: length and the SSLRequest code


def self_signed(hostname: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed CA certificate for `hostname` and its key, written to `directory`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{hostname}.crt", directory / f"{hostname}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextmanager
def tls_server(hostname: str, directory: Path) -> Iterator[tuple[int, Path]]:
    """Serve a certificate for `hostname`; yields the port and the certificate's path (as a
    root it makes verify-ca pass and verify-full check the name)."""
    cert_path, key_path = self_signed(hostname, directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # shut down: the block is over
                return
            with client:
                client.settimeout(10)
                try:
                    client.recv(SSL_REQUEST)
                    client.sendall(b"S")
                    with context.wrap_socket(client, server_side=True) as tls:
                        tls.recv(1)  # the client hangs up once it has refused the certificate
                except (OSError, ssl.SSLError):
                    pass  # the refusal is the client's business; serve the next one

    thread = threading.Thread(target=serve, name="tls-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], cert_path
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux)
        listener.close()
        thread.join(timeout=5)
